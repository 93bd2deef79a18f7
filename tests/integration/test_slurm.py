"""Pilots submitted with sbatch to a real single-node Slurm, through the wrapper and the bundle.

Several pilots drain one queue of jobs, from the embedded dispatcher and from the real panda-server;
every job ends finished exactly once, with the batch job's id as its batch id. `scancel` of a running
pilot: the pilot gets SIGTERM, kills its payload, reports the job failed with 1201 and exits 143.
"""

from __future__ import annotations

import re
from pathlib import Path

from pilot.errors import ErrorCode
from tests.e2e.conftest import QUEUE, Site, pids_alive, read_pids, wait_for
from tests.integration.pandaserver import PandaServer
from tests.integration.slurm import SlurmCluster
from tests.integration.test_pilot_panda import PilotSite
from tests.launch.conftest import WRAPPER, node_python


def submit_pilots(slurm: SlurmCluster, bundle: Path, root: Path, count: int, options: list[str],
                  *wrapper_options: str) -> list[str]:
    base = root / "base"
    base.mkdir(exist_ok=True)
    argv = [str(WRAPPER), "--bundle", str(bundle), "--python", node_python(), "--workdir-base", str(base),
            *wrapper_options, "--", *options]
    env = {"PANDAPILOT_NATIVE_CACHE": str(root / "native")}
    return [slurm.sbatch(argv, root, env=env) for _ in range(count)]


def local_options(site: Site) -> list[str]:
    return ["--queue", QUEUE, "--dispatcher", str(site.jobs), "--queue-config", str(site.write_queue()),
            "--max-no-job", "1", "--no-job-wait", "0.05", "--max-failures", "0"]


def pilot_outputs(root: Path, batch_ids: list[str]) -> str:
    return "".join((root / f"slurm-{j}.out").read_text() for j in batch_ids)


def test_pilots_under_slurm_drain_a_job_directory(slurm: SlurmCluster, bundle: Path, tmp_path: Path) -> None:
    site = Site(tmp_path)
    panda_ids = list(range(101, 111))
    for panda_id in panda_ids:
        site.add_job(panda_id, f"echo {panda_id} > out{panda_id}.dat", outputs=(f"out{panda_id}.dat",))
    batch_ids = submit_pilots(slurm, bundle, tmp_path, 3, local_options(site))
    done = slurm.wait_finished(batch_ids, timeout=240)
    assert {job.state for job in done.values()} == {"COMPLETED"}, done
    for panda_id in panda_ids:
        history = site.history(panda_id)
        finals = [h for h in history if h["job_status"] in ("finished", "failed")]
        assert [h["job_status"] for h in finals] == ["finished"], history
        assert {h["batch_id"] for h in history} <= set(batch_ids)
        assert (site.se / "out" / "scope" / f"out{panda_id}.dat").read_text() == f"{panda_id}\n"
    assert sorted(p.name for p in (site.jobs / "claimed").iterdir()) == sorted(f"{i}.json" for i in panda_ids)
    outputs = pilot_outputs(tmp_path, batch_ids)
    for panda_id in panda_ids:
        assert len(re.findall(rf"job {panda_id} finished \(error 0\) reported", outputs)) == 1


def test_scancel_ends_the_pilot_and_its_job_1201(slurm: SlurmCluster, bundle: Path, tmp_path: Path) -> None:
    site = Site(tmp_path)
    pidfile = tmp_path / "payload.pid"
    site.add_job(121, f"echo $$ > {pidfile}; sleep 600")
    [batch_id] = submit_pilots(slurm, bundle, tmp_path, 1, local_options(site))
    payload = read_pids(pidfile, 1, timeout=120)[0]
    site.wait_state(121, "running", timeout=60)
    slurm.scancel(batch_id)
    assert slurm.wait_finished([batch_id], timeout=120)[batch_id].state == "CANCELLED"
    # Slurm records the cancel at once; its processes get SIGTERM, then SIGKILL after KillWait (30 s)
    output = wait_for(lambda: "the pilot exited with code" in (text := pilot_outputs(tmp_path, [batch_id])) and text,
                      60, "the wrapper to see the pilot's end")
    assert "SIGTERM: forwarding it to the pilot" in output
    assert "the pilot exited with code 143" in output
    final = site.final(121)
    assert (final["job_status"], final["pilot_error_code"]) == ("failed", ErrorCode.SIGTERM)
    assert final["batch_id"] == batch_id
    assert pids_alive([payload]) == []


def test_pilots_under_slurm_drain_the_panda_server(slurm: SlurmCluster, bundle: Path, panda_server: PandaServer,
                                                   tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    panda_ids = [panda_server.insert_job(outputs=[f"out-{n}.dat"], job_pars=f"-c 'echo {n} > out-{n}.dat'")
                 for n in range(6)]
    options = [arg for arg in site.argv()[4:]]
    workdir = options.index("--workdir")
    del options[workdir: workdir + 2]  # the wrapper makes the work dir
    batch_ids = submit_pilots(slurm, bundle, tmp_path, 2, options)
    done = slurm.wait_finished(batch_ids, timeout=300)
    assert {job.state for job in done.values()} == {"COMPLETED"}, pilot_outputs(tmp_path, batch_ids)[-3000:]
    panda_server.run_adder()
    outputs = pilot_outputs(tmp_path, batch_ids)
    for panda_id in panda_ids:
        state = panda_server.job_state(panda_id)
        assert (state["table"], state["jobstatus"]) == ("jobsarchived4", "finished"), state
        assert state["batchid"] in batch_ids
        assert state["pilotid"].endswith("|PR|0.1.0")
        assert len(re.findall(rf"job {panda_id} finished \(error 0\) reported", outputs)) == 1


def test_a_release_candidate_pilot_takes_only_test_jobs(slurm: SlurmCluster, bundle: Path,
                                                        panda_server: PandaServer, tmp_path: Path) -> None:
    site = PilotSite(tmp_path, panda_server)
    production = panda_server.insert_job(job_pars="-c true")
    candidate_test = panda_server.insert_job(job_pars="-c true", prod_source_label="rc_test2")
    options = site.argv()[4:]
    [batch_id] = submit_pilots(slurm, bundle, tmp_path, 1, options, "--rc-bundle", str(bundle), "--rc-share", "100")
    slurm.wait_finished([batch_id], timeout=300)
    wait_for(lambda: panda_server.job_state(candidate_test)["jobstatus"] in ("holding", "finished"), 30,
             "the test job's final state")
    state = panda_server.job_state(candidate_test)
    assert state["pilotid"].endswith("|RC|0.1.0") and state["batchid"] == batch_id
    assert panda_server.job_state(production)["jobstatus"] == "activated", "no production job for a candidate"
    panda_server.discard_pending_jobs()


def test_stopping_the_cluster_first_ends_the_jobs_left_on_it(slurm: SlurmCluster, tmp_path: Path) -> None:
    """A test that failed half-way may leave batch jobs running: the fixture's stop cancels every job of its
    private controller before the daemons go, so no slurmstepd or payload outlives the session."""
    script = tmp_path / "hold.sh"
    script.write_text(f"#!/bin/bash\necho $$ > {tmp_path}/pid\nexec sleep 300\n")
    script.chmod(0o755)
    job_id = slurm.sbatch([str(script)], tmp_path, name="left-behind")
    wait_for(lambda: slurm.running(job_id) and (tmp_path / "pid").exists(), 60, "the batch job to run")
    pid = int((tmp_path / "pid").read_text())
    slurm.cancel_all()
    assert not slurm.running(job_id)
    wait_for(lambda: not pids_alive([pid]), 30, "the batch job's process to end")
