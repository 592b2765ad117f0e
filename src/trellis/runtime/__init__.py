"""Where bytes move: asyncio protocols on uvloop, httptools codecs, timers and processes."""
