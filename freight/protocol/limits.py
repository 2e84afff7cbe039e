"""Named limits and defaults of the wire protocol. Decoders enforce these."""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 1

MAX_HEADER_BYTES: Final = 64 * 1024
MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024

# Stream defaults (see docs/protocol.md "Streams").
CHECKPOINT_INTERVAL: Final = 8 * 1024 * 1024
KEEPALIVE_SECONDS: Final = 120.0
# The sender stops and waits for an acknowledgement once it is this many
# checkpoint intervals ahead of the last durable checkpoint; the receiver
# treats a sender further ahead than RECEIVER_MAX_UNACKED intervals as broken.
SENDER_WINDOW_INTERVALS: Final = 2
RECEIVER_MAX_UNACKED_INTERVALS: Final = 4
CHUNK_BYTES: Final = 1024 * 1024
# Batches of small files (docs/protocol.md "Batches"): files up to
# SMALL_FILE_BYTES travel together, at most MAX_BATCH_FILES and
# MAX_BATCH_BYTES of file bytes per batch, the manifest at most
# MAX_MANIFEST_BYTES (all of it well inside MAX_PAYLOAD_BYTES).
SMALL_FILE_BYTES: Final = 256 * 1024
MAX_BATCH_FILES: Final = 512
MAX_BATCH_BYTES: Final = 8 * 1024 * 1024
MAX_MANIFEST_BYTES: Final = 1024 * 1024
MIN_CHUNK_BYTES: Final = 16 * 1024

# An agent command's arguments (JSON), checked when it is queued: escaped
# inside a command frame's header they still fit MAX_HEADER_BYTES.
MAX_COMMAND_ARGS_BYTES: Final = 16 * 1024
# A JSON string field of a command frame (args, result).
MAX_JSON_CHARS: Final = 60000

MAX_NAME_CHARS: Final = 1024
MAX_ID_CHARS: Final = 64
MAX_TEXT_CHARS: Final = 4096

# Bandwidth probe (docs/protocol.md "20. Bandwidth probe"): a train lasts at
# most MAX_PROBE_SECONDS, its records are at most MAX_PROBE_RECORD bytes, and
# a report carries at most MAX_PROBE_SAMPLES arrival samples.
MAX_PROBE_SECONDS: Final = 10.0
MAX_PROBE_RECORD: Final = 1024 * 1024
MAX_PROBE_SAMPLES: Final = 512
