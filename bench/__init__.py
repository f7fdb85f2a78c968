"""Benchmarks: wxlogin's hot paths measured side by side with bare grpc.aio and aiohttp."""
