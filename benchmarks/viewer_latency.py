"""Click and box latency of a running viewer: `python -m benchmarks.viewer_latency --url URL --case ID`, URL the one
the viewer printed (with its token).

Opens the URL as a browser does (its cookie then carries the token), opens the case in a new session, waits until
its slice embeddings are all computed and the decoder compiled, then on each of --slices tumour slices (from the
case's ground truth, read from the server's labels) clicks the tumour's interior-most voxel, or with --prompt box
gives the tumour's tight box as a drag does, undoing each, and prints the median and 90th percentile of the server's
time for the edit and of the whole request (the edit's POST, as the page sends it, plus the labels GET it redraws
from)."""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import time
import urllib.parse
import urllib.request

import numpy as np
from scipy import ndimage

BROWSER = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _call(url: str, body: dict | None = None, method: str | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method or ("POST" if data is not None else "GET"),
        headers={"Content-Type": "application/json"},
    )
    with BROWSER.open(request) as response:
        raw = response.read()
        if response.headers.get_content_type() == "application/json":
            return json.loads(raw)
        return raw, response.headers


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the URL the viewer printed, with its ?token=")
    parser.add_argument("--case", required=True)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--prompt", choices=("click", "box"), default="click")
    args = parser.parse_args()
    _call(args.url)  # the page: its answer sets the token's cookie
    base = urllib.parse.urljoin(args.url, "/").rstrip("/")
    info = _call(f"{base}/api/sessions", {"case": args.case})
    session = f"{base}/api/sessions/{info['session']}"
    tick = time.perf_counter()
    while not ((s := _call(session))["embedded"] >= s["slices"] and s["warmed"]):
        time.sleep(0.5)
    print(
        f"{args.case}: {s['slices']} slices embedded and the decoder compiled {time.perf_counter() - tick:.1f} s "
        f"after opening"
    )
    X, Y, Z = info["shape"]
    targets = []
    for z in range(*info["slices"]):
        raw, headers = _call(f"{session}/labels?axis=axial&index={z}")
        gt = (np.frombuffer(raw, np.uint8).reshape(int(headers["X-Rows"]), int(headers["X-Cols"])) & 2) > 0
        if gt.any():
            if args.prompt == "box":  # planes.plane's axial orientation, inverted: rows run from high to low y
                rows, cols = np.nonzero(gt)
                prompt = dict(
                    x0=int(cols.min()), y0=Y - 1 - int(rows.max()), x1=int(cols.max()), y1=Y - 1 - int(rows.min())
                )
            else:
                depth = ndimage.distance_transform_edt(np.pad(gt, 1))[1:-1, 1:-1]
                row, col = np.unravel_index(np.argmax(depth), gt.shape)
                prompt = dict(x=int(col), y=Y - 1 - int(row), positive=True)
            targets.append(dict(prompt, z=z))
    step = max(1, len(targets) // args.slices)
    server, whole = [], []
    for prompt in targets[::step][: args.slices]:
        tick = time.perf_counter()
        answer = _call(f"{session}/{args.prompt}", prompt)
        _call(f"{session}/labels?axis=axial&index={prompt['z']}")
        whole.append(1000 * (time.perf_counter() - tick))
        server.append(answer["milliseconds"])
        _call(f"{session}/undo", {})
    for name, values in (("server edit", server), (f"{args.prompt} + redraw request", whole)):
        print(
            f"{name}: median {np.median(values):.0f} ms, 90th percentile {np.percentile(values, 90):.0f} ms "
            f"over {len(values)} {dict(click='clicks', box='boxes')[args.prompt]}"
        )


if __name__ == "__main__":
    main()
