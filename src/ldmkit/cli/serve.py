"""`ldm serve`: a web page (and its JSON API) that generates from one model."""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Iterator

from ldmkit.compile_choices import COMPILE_CHOICES
from ldmkit.errors import UserError
from ldmkit.pretrained import DEFAULT_MODEL, bundled_names

from .help_format import DefaultsHelpFormatter


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a web page that generates images from a model",
        description="Load a model once and serve a web page for generating from it: pick a class (or write a "
        "prompt for a text-to-image model), the number of images, sampler, steps, guidance and seed; the images "
        "appear on the page with their seeds, the same images `ldm generate --seed` writes. A start image "
        "(img2img) and paint over part of it (inpainting) work as --init-image and --mask. The page's JSON API: "
        "GET /api/info, POST /api/generate, GET /api/progress, POST /api/stop (src/ldmkit/serve/server.py). The "
        "server has no login: keep the default --host 127.0.0.1 unless everyone who can reach the machine may "
        "use it. Ctrl-C (or SIGTERM) stops it, answering the requests still open with 503; exit status 0.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a bundled model ({', '.join(bundled_names())}), a run folder, an inference .safetensors "
                   "file, a diffusers pipeline folder or a CompVis/SD checkpoint")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens the page to the network (no login)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="behind a reverse proxy, the host name its users open (e.g. ldm.example.com); repeatable. "
                   "Requests from another site's page (its Origin) are refused with 403, and on a loopback --host "
                   "(the default) so are requests addressed to a name that is not a loopback one or allowed here "
                   "(DNS rebinding); with --host 0.0.0.0 any Host name is served"),
    p.add_argument("--max-images", type=int, default=64, help="most images one request may ask for")
    p.add_argument("--max-steps", type=int, default=200, help="most sampler steps one request may ask for")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="CLIP tokenizer folder for a CompVis/SD single-file --model (it stores none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                   help="torch.compile the UNet (with CUDA graphs on a GPU); auto does so on CUDA, where the "
                   "first request of each batch size (a power of two up to 64) waits for its compile, tens of "
                   "seconds, and later ones run several times faster than uncompiled")
    p.add_argument("--warm-up", type=int, nargs="+", default=None, metavar="N",
                   help="before serving, generate one request of each of these sizes, so that their compiles "
                   "happen at startup rather than in a user's first request (e.g. --warm-up 1 8 64)")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ldmkit.device import resolve_device
    from ldmkit.pipeline import LatentDiffusionPipeline
    from ldmkit.serve import GenerationService, JobRunner, Limits, make_server

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535 (got {args.port})")
    for flag, value in (("--max-images", args.max_images), ("--max-steps", args.max_steps)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1 (got {value})")
    listen_check(args.host, args.port)  # before the model loads and warms up: minutes, for a big one on a GPU
    options = {"tokenizer": args.tokenizer} if args.tokenizer else {}
    device = resolve_device(args.device)
    # A server lives long: "auto" compiles on CUDA whatever a request's size (`ldm generate`'s
    # auto waits for 256 images), and the service keeps the number of batch sizes small.
    compile_setting = args.compile if args.compile != "auto" else ("on" if device.type == "cuda" else "off")
    pipe = LatentDiffusionPipeline.from_pretrained(args.model, device=str(device), compile=compile_setting,
                                                   **options)
    if pipe.takes_text:
        pipe.check_prompt("")  # no text encoder: every request would fail; say so now
    service = GenerationService(pipe, name=str(args.model),
                                limits=Limits(max_images=args.max_images, max_steps=args.max_steps))
    warm_up = []
    for n in args.warm_up or ():  # all checked before the first runs
        try:
            # a compile depends neither on the steps nor on the prompt (a text model refuses none)
            request = {"n": n, "steps": 1} | ({"prompt": "warm-up"} if service.pipe.takes_text else {})
            warm_up.append(service.prepare(request))
        except UserError as err:
            raise UserError(f"--warm-up {n}: {err}") from None
    for job in warm_up:
        compiling = " (compiling, tens of seconds)" if service.compiled else ""
        print(f"warming up: a batch of {job.batch_size}{compiling}", flush=True)
        service.run(job)
    runner = JobRunner()
    with listen_errors(args.host, args.port):
        server = make_server(service, args.host, args.port, runner=runner, quiet=args.quiet,
                             allowed_hosts=tuple(args.allow_host))
    # kill, systemd, docker stop: the same orderly stop as Ctrl-C; and SIGINT too where the shell that
    # started the server in the background set it to be ignored (`kill -INT` did nothing)
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _interrupt)
    # Requests are answered on the server's threads; the model runs here, on the main thread
    # (serve/jobs.py says why), until Ctrl-C. (`shutdown()` waits for a serve_forever that has started.)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    try:  # from here a signal stops the server in order, the first line said included
        _announce(service, server, args.model)
        runner.run()  # on its way out it answers the queued jobs' requests with 503
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.shutdown()
        server.wait_for_answers(timeout=2.0)  # their request threads are daemons: let the 503s out first
        server.server_close()
    return 0


def _announce(service, server, model: str) -> None:
    print(f"serving {service.kind} model {model} ({service.pipe.image_size} px, {service.pipe.device}) at "
          f"{page_address(*server.server_address[:2])}  (Ctrl-C stops)", flush=True)
    if service.compiled:
        print("the UNet is compiled for each batch size when a request first needs it (a request of n images "
              "runs in a batch of the next power of two): that request waits tens of seconds", flush=True)


def page_address(host: str, port: int) -> str:
    """The page's URL for a server listening on host:port ("::1" in brackets; "every address" as loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def listen_errors(host: str, port: int) -> Iterator[None]:
    """`UserError` in words for an address that cannot be listened on."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is already in use on {host}: pass another --port "
                            "(--port 0 picks a free one)") from None
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def listen_check(host: str, port: int) -> None:
    """Bind host:port once and let it go, so that a port in use is refused before the model loads."""
    from ldmkit.serve.origin import address_family  # ldmkit.serve imports torch: not for `ldm --help`

    with listen_errors(host, port), socket.socket(address_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        probe.bind((host, port))
