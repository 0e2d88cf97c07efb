"""The request trace: one JSON line per finished request (`writer`), read back by `reader`."""
