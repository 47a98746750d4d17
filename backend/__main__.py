"""`python -m backend [--public] [--config FILE] [--host H] [--port P] [--profile NAME]`"""
from __future__ import annotations

import argparse
import logging
import sys

from .server import Server
from .settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Run the EnfoadsIA backend.")
    parser.add_argument("--config", help="YAML settings file (else ENFOADS_CONFIG)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--profile", choices=["colab", "local", "smoke"])
    parser.add_argument("--public", action="store_true", help="publish through an ngrok tunnel")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "profile": args.profile}.items() if v is not None}
    if args.public:
        overrides["public"] = True
    settings = load_settings(args.config, **overrides)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    server = Server(settings)
    print(f"Local URL: {server.url}\nAPI key:   {server.key_for_display}", flush=True)
    worker_key = server.app.extensions["enfoads"].worker_key
    if worker_key is not None:  # distributed mode: what `python -m backend.worker --key` needs
        shown = worker_key if settings.worker_key is None else "(the one you configured: ENFOADS_WORKER_KEY)"
        print(f"Worker key (GPU workers only, never a client): {shown}", flush=True)
    if settings.public:
        from .tunnel import open_tunnel

        token = settings.ngrok_authtoken.get_secret_value() if settings.ngrok_authtoken else None
        result = open_tunnel(server.port, authtoken=token, domain=settings.ngrok_domain)
        print(result.message, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
