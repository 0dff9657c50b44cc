"""Requests SayPI's worker refuses to frame, and the contract's answer to what gunicorn refuses.

Each refusal is `400 invalid_request` with a reason of its own; the
exception's text, which quotes what the client sent, stays in the log.
"""

from __future__ import annotations

import ssl

from gunicorn.http import errors as http_errors

from app.http.errors import ApiError, InternalFailure, InvalidRequest

SUPPORTED_VERSIONS = ((1, 0), (1, 1))
UNSUPPORTED_CODING = "the transfer coding is not supported (only chunked is)"
BAD_CONTENT_LENGTH = "the Content-Length header is invalid, repeated or sent with Transfer-Encoding"
HOST_MISSING = "the Host header is missing (HTTP/1.1 requires it)"
HOST_REPEATED = "the Host header is repeated"


class FramingError(http_errors.ParseException):
    """A request gunicorn parsed but SayPI refuses to frame; `reason` is the client's."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def framing_refusal(req) -> http_errors.ParseException | None:
    """Why a request gunicorn accepted cannot be served, or None (RFC 9112 sections 2.3,
    3.2 and 6.1).

    gunicorn serves HTTP/1.2 to 1.9 and echoes the version in the answer,
    serves HTTP/1.1 without a Host, and passes bodies sent with `gzip`,
    `deflate`, `compress` or `identity` before `chunked` on undecoded.
    """
    if req.version not in SUPPORTED_VERSIONS:
        return http_errors.InvalidHTTPVersion(req.version)
    host, codings = False, None  # gunicorn refuses a repeated Host itself
    for name, value in req.headers:
        if name == "HOST":
            host = True
        elif name == "TRANSFER-ENCODING":
            codings = (codings or []) + [v.strip(" \t").lower() for v in value.split(",")]
    if not host and req.version >= (1, 1):
        return FramingError(HOST_MISSING)
    if codings is not None and codings != ["chunked"]:
        return http_errors.UnsupportedTransferCoding(", ".join(codings))
    return None


# The client's reason for each error gunicorn's parser raises (first match wins). Never
# the exception's text: it quotes what the client sent, an Authorization line included.
_PARSE_REASONS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (http_errors.UnsupportedTransferCoding, UNSUPPORTED_CODING),
    (http_errors.InvalidHTTPVersion,
     "the HTTP version is not supported (only HTTP/1.0 and HTTP/1.1 are)"),
    (http_errors.InvalidRequestMethod, "the request method is malformed"),
    (http_errors.LimitRequestLine, "the request line is too long"),
    (http_errors.InvalidRequestLine, "the request line is malformed"),
    (http_errors.LimitRequestHeaders, "the request headers are too many or too large"),
    (http_errors.ObsoleteFolding, "a header is folded over several lines (obsolete line folding)"),
    (http_errors.InvalidHeaderName, "a request header name is malformed"),
    (http_errors.InvalidHeader, "a request header is malformed"),
    (http_errors.ExpectationFailed, "the Expect header is not supported"),
    ((http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator,
      http_errors.InvalidChunkExtension), "the chunked body is malformed"),
)
_HEADER_REASONS = {"CONTENT-LENGTH": BAD_CONTENT_LENGTH,
                   "TRANSFER-ENCODING": "the Transfer-Encoding header is invalid",
                   "HOST": HOST_REPEATED, "CONTENT-TYPE": "the Content-Type header is repeated"}


def parse_error_answer(exc: BaseException) -> ApiError:
    """The contract's error for an exception gunicorn hands to `handle_error`.

    Whatever gunicorn could not parse is `400 invalid_request`, including the
    codes the contract does not have (gunicorn's 414, 417, 431, 501);
    anything else (and gunicorn's configuration problems) is `500`.
    """
    if isinstance(exc, http_errors.ConfigurationProblem | http_errors.InvalidResponseHeader |
                  http_errors.InvalidResponseHeaderName) or \
            not isinstance(exc, http_errors.ParseException | ssl.SSLError):
        return InternalFailure()
    if isinstance(exc, FramingError):
        return InvalidRequest(exc.reason)
    header = getattr(exc, "hdr", None)  # gunicorn's InvalidHeader names the header
    if type(exc) is http_errors.InvalidHeader and header in _HEADER_REASONS:
        return InvalidRequest(_HEADER_REASONS[header])
    for kinds, reason in _PARSE_REASONS:
        if isinstance(exc, kinds):
            return InvalidRequest(reason)
    return InvalidRequest("the request is malformed")
