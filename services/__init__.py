"""Running the service: settings, roles, wiring, the HTTP edge, the NATS query service, the command line."""
