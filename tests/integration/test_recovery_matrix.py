"""The SIGKILL matrix against the real panda-server, in both dialects (see tests/recovery_matrix.py).

The job is inserted as the server's own submission leaves it; both pilots talk to the server over TLS with
a client certificate; after the recovery the server's Adder pass finalizes the job."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.integration.pandaserver import PandaServer
from tests.recovery_matrix import (
    POINT_IDS,
    POINTS,
    SIZE,
    Cell,
    Point,
    adler,
    check_no_survivor,
    check_storage,
    expected_outputs,
    final_requests,
    payload_script,
)

SCOPE = "pilot-ci"


@pytest.mark.parametrize("point", POINTS, ids=POINT_IDS)
def test_sigkill_matrix_panda_server(point: Point, panda_server: PandaServer, tmp_path: Path) -> None:
    srv = panda_server
    srv.discard_pending_jobs()
    se = tmp_path / "se"
    (se / SCOPE).mkdir(parents=True)
    queue = tmp_path / "queue.yaml"
    queue.write_text(f"se: {se}\nseprodpath: prod\nkill_grace: 3\ncopytool: gated\ncopytoolin: gated\n")
    data = os.urandom(SIZE)
    lfn = f"in-{uuid.uuid4().hex[:12]}.dat"
    (se / SCOPE / lfn).write_bytes(data)
    spec = {"lfn": lfn, "fsize": str(len(data)), "checksum": f"ad:{adler(data)}", "scope": SCOPE}
    out1, out2 = (f"out{n}-{uuid.uuid4().hex[:12]}.dat" for n in (1, 2))
    argv = ["--queue", srv.site, "--dispatcher", srv.url, "--dispatcher-api", srv.api, "--cacert", str(srv.ca_cert),
            "--cert", str(srv.client_cert), "--key", str(srv.client_key), "--queue-config", str(queue),
            "--workdir", str(tmp_path / "work"), "--max-no-job", "1", "--no-job-wait", "0", "--retry-budget", "120"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("X509_", "REQUESTS_", "HTTPS_", "https_"))}
    cell = Cell(point, tmp_path, argv, env, out1, out2, "")
    panda_id = srv.insert_job(inputs=[spec], outputs=[out1, out2],
                              job_pars=f"-c '{payload_script(lfn, out1, out2, cell.pids, point.gate == 'payload')}'")
    cell.log = f"pilot-ci.{panda_id}.log.tgz"
    logs, pids = cell.run()

    assert len(final_requests(cell)) == 1, (final_requests(cell), logs[-3000:])
    srv.run_adder()
    state = srv.job_state(panda_id)
    assert (state["table"], state["jobstatus"]) == ("jobsarchived4", point.state), (state, logs[-3000:])
    assert (state["piloterrorcode"] or 0) == point.code
    outputs = expected_outputs(point, data, out1, out2)
    stored = se / "prod" / SCOPE
    check_storage(se / "prod", {**outputs, cell.log: (stored / cell.log).read_bytes()})
    rows = {row["lfn"]: row for row in srv.files(panda_id)}
    for name in [*outputs, cell.log]:  # listed in the report: the server took size and checksum from it
        content = (stored / name).read_bytes()
        assert int(rows[name]["fsize"]) == len(content), rows[name]
        assert rows[name]["checksum"].endswith(adler(content)), rows[name]
    check_no_survivor(pids, logs)
    assert not list((tmp_path / "work").glob("PanDA_Pilot-*"))
