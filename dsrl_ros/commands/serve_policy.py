"""`dsrl-ros serve-policy`: serve any supported base policy over a websocket (openpi protocol, noise with the
observation) so a GPU box can be the robot PC's base policy (`policy.checkpoint: ws://host:port`, or a remote
policy directory with a local fallback)."""

from __future__ import annotations

import argparse
import json
import signal

import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-policy", help="serve a base policy over a websocket (openpi protocol)")
    p.add_argument("--policy", required=True, help="policy directory or shipped:<name>")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--delay-s", type=float, default=0.0, help="added latency per request (testing timeouts)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dsrl_ros.core.checkpoint import resolve_device
    from dsrl_ros.policies import load_base_policy
    from dsrl_ros.policies.server import PolicyServer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.delay_s < 0:
        raise ValueError(f"--delay-s: expected seconds >= 0, got {args.delay_s}")
    policy = load_base_policy(args.policy, resolve_device(args.device))
    server = PolicyServer(policy, args.host, args.port, delay_s=args.delay_s)
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops it like Ctrl-C
    print(json.dumps({"serving": args.policy, "url": f"ws://{args.host}:{server.port}",
                      "spec": policy.spec.to_json()}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()
    return 0
