"""The cache doctor: replay a request trace through the real cache, and explain its hit rate."""
