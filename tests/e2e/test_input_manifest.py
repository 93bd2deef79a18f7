"""Stage-in's result reaches the payload: the input manifest, through the pilot's command line."""

from __future__ import annotations

import json

from pilot.errors import ExitCode

from .conftest import Site

# the payload copies what it was handed into an output, so the test reads it back from the storage
SHOW = ('cp "$PILOT_INPUT_MANIFEST" manifest.json && { cat PoolFileCatalog.xml 2>/dev/null || '
        'echo none; } > pfc.txt && test -r "$(python3 -c "import json,os; '
        'print(json.load(open(os.environ[\'PILOT_INPUT_MANIFEST\']))[\'files\'][0].get(\'path\', \'/dev/null\'))")"')


def run_one(site: Site, **extra) -> tuple[dict, str]:
    a = site.put_input("a.root", b"alpha" * 1000)
    site.add_job(21, SHOW, (a,), ("manifest.json", "pfc.txt"), **extra)
    result = site.run()
    assert result.returncode == ExitCode.OK, result.stderr
    assert site.final(21)["job_status"] == "finished", site.final(21)
    out = site.se / "out" / "scope"
    return json.loads((out / "manifest.json").read_text()), (out / "pfc.txt").read_text()


def test_the_payload_gets_the_local_path_of_each_input(site: Site) -> None:
    manifest, pfc = run_one(site)
    entry = manifest["files"][0]
    assert (entry["lfn"], entry["outcome"], entry["guid"]) == ("a.root", "copied", "g-21-0")
    assert entry["path"].endswith("/a.root") and "turl" not in entry
    assert pfc == "none\n"


def test_a_direct_read_input_is_handed_over_as_its_turl(site: Site) -> None:
    site.queue_settings["allowdirectaccess"] = True
    manifest, pfc = run_one(site, transferType="direct")
    entry = manifest["files"][0]
    assert entry["outcome"] == "direct" and entry["turl"] == str(site.se / "scope" / "a.root")
    assert "path" not in entry
    assert f'name="{site.se / "scope" / "a.root"}"' in pfc and 'ID="g-21-0"' in pfc
