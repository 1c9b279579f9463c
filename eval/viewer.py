"""Click a tumour in the browser: `python -m eval.viewer --checkpoint WORKDIR --data_dir DIR` (or --case_dir CASE,
or --zero_shot --sam_weights S) serves a page on http://127.0.0.1:8765/ to open a case, click the tumour
(shift- or right-click: background), propagate the mask through the volume as eval.predict does, edit it slice by
slice, compare it with the ground truth, and save it as NIfTI on the case's grid (next to the case, or in
--output_dir). Serves only the cases under the given directory, to whoever opens the printed URL (it carries a
random token, as Jupyter's does); binds to localhost unless --host says otherwise."""

from __future__ import annotations

import sys

from absl import app, flags

from eval.common import EXPECTED_ERRORS, define_model_flags, fail, load_model
from sam_jax.data.domains import files_like
from sam_jax.evaluation import EvaluationError
from sam_jax.evaluation.segmenter import SliceSegmenter
from sam_jax.flags_util import run_app
from sam_jax.outputs import check_output_dir
from sam_jax.viewer import build_app
from sam_jax.viewer.access import new_token
from sam_jax.viewer.cases import CaseStore
from sam_jax.viewer.serving import LOCALHOST, bind, loopback, make_server, url

define_model_flags()
flags.DEFINE_string("data_dir", None, "Folder of BraTS cases (searched recursively, as eval.main does).")
flags.DEFINE_string("case_dir", None, "Folder of one case; instead of --data_dir.")
flags.DEFINE_string("output_dir", None, "Where 'save' writes masks; default: next to each case's files.")
flags.DEFINE_string(
    "host",
    LOCALHOST,
    "Address to listen on; another than 127.0.0.1 (0.0.0.0: all) sends the scans over the network, unencrypted.",
)
flags.DEFINE_integer("port", 8765, "Port; 0 picks a free one.", lower_bound=0, upper_bound=65535)
flags.DEFINE_integer(
    "cases_in_memory",
    2,
    "Opened cases kept in memory with their slice embeddings, however many tabs are open (a tab whose case was "
    "dropped reads it again).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "warm_clicks",
    4,
    "Compile the decoder for prompts of up to this many clicks when a case opens "
    "(each count is a new compilation: seconds on a first click otherwise).",
    lower_bound=0,
)
FLAGS = flags.FLAGS


def _listen():
    try:
        sock = bind(FLAGS.host, FLAGS.port)
    except OSError as e:
        raise EvaluationError(f"cannot listen on {FLAGS.host}:{FLAGS.port}: {e.strerror or e}") from None
    if not loopback(sock):
        port = sock.getsockname()[1]
        print(
            f"warning: --host {FLAGS.host}: the scans leave this machine, unencrypted (plain HTTP), for any machine "
            f"that reaches this address with the URL's token. To view them elsewhere, keep the default "
            f"{LOCALHOST} and tunnel: ssh -L {port}:{LOCALHOST}:{port} THIS_MACHINE",
            file=sys.stderr,
            flush=True,
        )
    return sock


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if bool(FLAGS.data_dir) == bool(FLAGS.case_dir):
            raise EvaluationError("give exactly one of --data_dir (a folder of cases) and --case_dir (one case)")
        output_dir = check_output_dir(FLAGS.output_dir, "--output_dir") if FLAGS.output_dir else None
        sock = _listen()  # a busy port is told now, not after the model has loaded
        trained = load_model()
        segmenter = SliceSegmenter(trained, FLAGS.batch_size)
        store = CaseStore(
            FLAGS.data_dir or FLAGS.case_dir,
            segmenter,
            trained.spec,
            keep=FLAGS.cases_in_memory,
            warm_clicks=FLAGS.warm_clicks,
        )
        if not store.files:
            raise EvaluationError(f"{store.data_dir}: no cases found ({files_like()})")
    except EXPECTED_ERRORS as e:
        return fail(e)
    token = new_token()
    print(f"{trained.name} on {len(store.files)} case(s) of {store.data_dir}: open {url(sock, token)}", flush=True)
    make_server(build_app(store, segmenter, output_dir, token=token)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
