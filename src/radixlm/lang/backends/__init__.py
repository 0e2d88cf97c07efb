"""Where programs run: the in-process engine, a server's native API, an OpenAI API."""
