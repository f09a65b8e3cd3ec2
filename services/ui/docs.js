"use strict";
// The OpenAPI document this server generates, rendered by the vendored Redoc (no fonts or scripts fetched).
Redoc.init("/openapi.json", { hideDownloadButton: false, expandResponses: "200,201" }, document.getElementById("redoc"));
