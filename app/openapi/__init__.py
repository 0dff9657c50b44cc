"""The OpenAPI 3.0.3 description of SayPI, built from the route table.

`builder` walks routes.py's `Route` entries and what they point to (each
route's `Doc`, the schemas and errors, which describe themselves);
`components` holds the shared parts (the fields' JSON Schema, headers, parameters).
"""
