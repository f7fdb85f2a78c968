"""wxlogin service: WeChat mini-program login over gRPC (see README.md)."""
