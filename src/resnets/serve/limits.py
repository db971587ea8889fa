"""The defaults of the serving limits, in one place: :func:`resnets.serve.create_app`'s arguments and
``resnets serve``'s options both read them. This module imports no web framework, so the command
line can show the defaults in its help without loading FastAPI (issue 18)."""

from __future__ import annotations

from ..preprocessing import MAX_RESIZED_PIXELS

MAX_BATCH = 32  # images per forward pass at most
MAX_WAIT_MS = 5.0  # how long the oldest request waits for others to share its batch
QUEUE_SIZE = 256  # images waiting at most; beyond it 503
TIMEOUT_S = 30.0  # per request (reading, decoding, the model); beyond it 504
MAX_BYTES = 10 * 2**20  # largest request body
# Largest image, read from its header before decoding. The same figure as the resize step's own
# bound, so that an image the server admits is never refused later by the resize.
MAX_PIXELS = MAX_RESIZED_PIXELS
MAX_REQUESTS = 64  # requests in flight at once; beyond it 503
REQUEST_PIXELS_PER_MAX_PIXELS = 4  # max_request_pixels when not given: 4 x max_pixels
INFLIGHT_BYTES_PER_MAX_BYTES = 8  # max_inflight_bytes when not given: 8 x max_bytes
