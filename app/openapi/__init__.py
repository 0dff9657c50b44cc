"""The OpenAPI 3.0.3 description of SayPI, built from the route table.

`doc` holds the vocabulary each API area describes its operations with
(`Doc`, `Success`, `Link`; the descriptions themselves live at the end of
app/api/<area>.py, next to their handlers), `components` the shared parts of
the document (schemas from marshmallow, errors, headers, parameters,
examples), and `builder` turns routes.py's `Route` entries into the document.
"""
