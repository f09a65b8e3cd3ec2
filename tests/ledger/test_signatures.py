"""Standard Webhooks signatures, checked against the specification's own published test vector."""

import pytest

from ledger.signatures import SignatureError, new_secret, secret_key, sign, verify

# The test vector published with the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(signature: str = SPEC_SIGNATURE, message_id: str = SPEC_ID) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": signature}


def test_signing_reproduces_the_specification_vector():
    """Our signer makes exactly the signature the specification publishes."""
    assert sign(secret_key(SPEC_SECRET), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_the_specification_vector_verifies():
    """A request signed like the specification's example is accepted."""
    assert verify([secret_key(SPEC_SECRET)], spec_headers(), SPEC_BODY, now_s=SPEC_TIMESTAMP + 10) == SPEC_ID


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (spec_headers(), b'{"test": 2432232315}'),  # the body changed after signing
        (spec_headers(message_id="msg_other"), SPEC_BODY),  # another webhook-id
        (spec_headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE"), SPEC_BODY),  # truncated signature
        (spec_headers("v2," + SPEC_SIGNATURE[3:]), SPEC_BODY),  # not a v1 signature
    ],
)
def test_the_specifications_negative_cases_are_refused(headers, body):
    """Anything but the exact signed bytes, id and scheme is refused."""
    with pytest.raises(SignatureError):
        verify([secret_key(SPEC_SECRET)], headers, body, now_s=SPEC_TIMESTAMP)


def test_another_secret_is_refused():
    with pytest.raises(SignatureError, match="no signature matches"):
        verify([secret_key(new_secret())], spec_headers(), SPEC_BODY, now_s=SPEC_TIMESTAMP)


@pytest.mark.parametrize("offset_s", [-301, 301, -3600])
def test_timestamps_more_than_five_minutes_off_are_refused(offset_s):
    """A replayed or badly clocked request is refused either way round."""
    with pytest.raises(SignatureError, match="5 minutes"):
        verify([secret_key(SPEC_SECRET)], spec_headers(), SPEC_BODY, now_s=SPEC_TIMESTAMP + offset_s)


@pytest.mark.parametrize("offset_s", [-300, 0, 300])
def test_timestamps_within_five_minutes_are_accepted(offset_s):
    assert verify([secret_key(SPEC_SECRET)], spec_headers(), SPEC_BODY, now_s=SPEC_TIMESTAMP + offset_s)


def test_any_of_several_signatures_with_any_current_secret_is_enough():
    """During a rotation the sender signs with both secrets and we hold both: either one proves it."""
    old, new = secret_key(new_secret()), secret_key(new_secret())
    header = " ".join([sign(new, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY), SPEC_SIGNATURE])
    assert verify([old, secret_key(SPEC_SECRET)], spec_headers(header), SPEC_BODY, now_s=SPEC_TIMESTAMP)
    assert verify([new], spec_headers(header), SPEC_BODY, now_s=SPEC_TIMESTAMP)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_refused(missing):
    headers = spec_headers()
    del headers[missing]
    with pytest.raises(SignatureError, match="required"):
        verify([secret_key(SPEC_SECRET)], headers, SPEC_BODY, now_s=SPEC_TIMESTAMP)


def test_new_secrets_are_random_and_decode_to_32_bytes():
    first, second = new_secret(), new_secret()
    assert first != second and first.startswith("whsec_")
    assert len(secret_key(first)) == 32
