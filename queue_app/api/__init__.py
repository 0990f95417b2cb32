"""The HTTP front end: `app` (the route table and the error answers), `endpoints`, `http` (protocol,
JSON, request bodies), `openapi` (the schema at /openapi.json) and `auth` (API tokens). It uses the core
(queue_app.gateway, params, lineage, sweeps, monitor) and serves the dashboard (queue_app.ui)."""
