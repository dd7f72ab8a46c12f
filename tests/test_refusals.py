"""Bad values and unreachable services refused up front (issue 25): one line naming the key or URI, before any
model is built, within seconds."""

import http.server
import socket
import threading
import time

import pytest

from skinflow.cli import main
from skinflow.tracking.store import StoreError, check_reachable
from tests.conftest import REPO

WARMUP = ["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml")]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("INFO:")]
    assert err[0].startswith("error: ") and len(err) <= 2, err  # the error, and at most the --help hint
    assert "Traceback" not in "\n".join(err)
    return err[0]


def test_an_unreachable_tracking_server_fails_fast_naming_the_uri(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    line = one_line_error(capsys, [*WARMUP, f"--trainer.logger.init_args.tracking_uri={uri}",
                                   "--trainer.logger.init_args.connect_timeout=2"])
    assert time.perf_counter() - start < 60
    assert f"MLflow tracking server {uri} did not answer within 2 s" in line


def test_a_server_that_accepts_but_never_answers_times_out():
    with socket.socket() as silent:  # listens (the kernel accepts connections) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(StoreError, match=r"did not answer within 1 s .*timed out"):
            check_reachable(uri, timeout=1.0)
        assert time.perf_counter() - start < 10


@pytest.mark.parametrize("status", [200, 401])
def test_a_server_that_answers_passes_whatever_its_status(status):
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_reachable(f"http://127.0.0.1:{server.server_port}/", timeout=5)
    finally:
        server.shutdown()
    assert seen == ["/health"]


def test_the_timeout_setting_is_checked(monkeypatch):
    monkeypatch.setenv("SKINFLOW_TRACKING_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="SKINFLOW_TRACKING_TIMEOUT='soon' is not a number"):
        check_reachable("http://127.0.0.1:9")
    check_reachable("sqlite:///mlruns/mlflow.db")  # a local store needs no answer
