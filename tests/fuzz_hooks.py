"""Schemathesis hooks for homing's API (named by SCHEMATHESIS_HOOKS in test_fuzz_api).

EST bodies are base64 text in ``application/pkcs10`` (RFC 7030 4.2.1): sent
as the text they are.
"""

import schemathesis

schemathesis.serializer.alias("application/pkcs10", "text/plain")
