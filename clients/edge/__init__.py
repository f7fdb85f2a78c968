"""The HTTP edge: mini-programs reach wxlogin as JSON over HTTP (`python -m clients.edge`)."""
