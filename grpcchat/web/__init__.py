"""Chat from a browser: `grpcchat serve --web-port 8080` serves the chat page and
chat.v1.ChatService over the Connect protocol and gRPC-Web (connectrpc on uvicorn), on the gRPC
server's event loop and hub.

`server` runs uvicorn on a socket of our own, `app` is the ASGI application (origin checks,
CORS, security headers, static files, then connectrpc's application), `service` implements the
RPCs by delegating to the gRPC servicer's protocol-neutral calls, `stream` writes a Subscribe
session, and `errors` maps ChatErrors to Connect codes through the server's one status mapping.

Nothing here is imported unless the web port is set (`pip install 'grpcchat[web]'`).
"""
