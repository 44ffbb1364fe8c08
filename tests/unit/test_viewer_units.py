"""The viewer gateway's decisions (viewer/dicomweb.py) and the OHIF install (ops/stack/ohif.py), without servers.

The install is run on small tarballs made here, so every branch (a good tarball, a
wrong checksum, unsafe entries, an interrupted install, a download over HTTP, the
minifying step) is exercised without the 50 MB release; esbuild is stood in for by a
script that does to each file what esbuild's CLI does to it, and refuses what would
change the program (bundling, a format). The browser test uses the real release and
the real esbuild.
"""

from __future__ import annotations

import functools
import http.server
import io
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import settings_from_values
from ops.stack import ohif
from ops.stack.layout import StackLayout
from ops.stack.supervisor_conf import render_supervisord_conf
from testkit.harness.stack import make_values
from viewer.app import HASHED, app_config_js
from viewer.dicomweb import Read, Refusal, classify, orthanc_query

S = "1.2.840.113619.2.55.3"
SE = "1.2.840.113619.2.55.3.4"
I = "1.2.840.113619.2.55.3.4.5"  # noqa: E741


@pytest.mark.parametrize(("path", "query", "kind", "level", "study", "content"), [
    ("/dicom-web/studies", "", "search", "studies", None, "json"),
    ("/dicom-web/studies", "PatientName=SMITH*&limit=101", "search", "studies", None, "json"),
    ("/dicom-web/studies", f"StudyInstanceUID={S}&includefield=00081030%2C00080060", "study", "studies", S, "json"),
    ("/dicom-web/series", f"0020000D={S}", "study", "series", S, "json"),
    ("/dicom-web/instances", "", "search", "instances", None, "json"),
    (f"/dicom-web/studies/{S}", "", "study", "study", S, "dicom"),
    (f"/dicom-web/studies/{S}/metadata", "", "study", "study", S, "json"),
    (f"/dicom-web/studies/{S}/series", "includefield=0008103E", "study", "study", S, "json"),
    (f"/dicom-web/studies/{S}/instances", "", "study", "study", S, "json"),
    (f"/dicom-web/studies/{S}/series/{SE}", "", "study", "series", S, "dicom"),
    (f"/dicom-web/studies/{S}/series/{SE}/metadata", "", "study", "series", S, "json"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances", "limit=1", "study", "series", S, "json"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}", "", "study", "instance", S, "dicom"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/metadata", "", "study", "instance", S, "json"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/rendered", "", "study", "instance", S, "pixels"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/frames/1", "", "study", "frames", S, "pixels"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/frames/1,2,30", "", "study", "frames", S, "pixels"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/frames/4/rendered", "", "study", "frames", S, "pixels"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/bulk/7fe00010", "", "study", "bulk", S, "bulk"),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/bulk/00540016/0/00181072", "", "study", "bulk", S, "bulk"),
    ("/wado", f"requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={I}&contentType=application%2Fdicom",
     "study", "wado", S, "wado"),
])
def test_reads_are_forwarded(path: str, query: str, kind: str, level: str, study: str | None, content: str) -> None:
    decision = classify("GET", path.encode(), query)
    assert decision == Read(kind, level, study, path, content)


@pytest.mark.parametrize(("method", "path", "query", "status"), [
    ("POST", "/dicom-web/studies", "", 405),  # STOW-RS
    ("POST", f"/dicom-web/studies/{S}", "", 405),
    ("DELETE", f"/dicom-web/studies/{S}", "", 405),
    ("PUT", f"/dicom-web/studies/{S}/series/{SE}", "", 405),
    ("HEAD", "/dicom-web/studies", "", 405),
    ("OPTIONS", "/wado", "", 405),
    ("GET", "/dicom-web", "", 403),
    ("GET", "/dicom-web/", "", 403),
    ("GET", "/dicom-web/servers", "", 403),
    ("GET", "/dicom-web/servers/pacs/get", "", 403),
    ("GET", "/dicom-web/info", "", 403),
    ("GET", "/dicom-web/studies/", "", 403),
    ("GET", f"/dicom-web/studies/{S}/", "", 403),
    ("GET", "/dicom-web/studies/abc", "", 403),
    ("GET", "/dicom-web/studies/1..2", "", 403),
    ("GET", "/dicom-web/studies/" + "1." * 40 + "1", "", 403),  # longer than a UID may be
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/frames/0", "", 403),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/frames/1;2", "", 403),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/bulk/7fe0001", "", 403),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/bulk/7fe00010/0", "", 403),
    ("GET", f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/export", "", 403),
    ("GET", f"/dicom-web/studies/{S}/frames/1", "", 403),
    ("GET", "/dicom-web/studies/../../tools/find", "", 403),
    ("GET", "/dicom-web/%2e%2e/system", "", 403),
    ("GET", "/dicom-web/studies%2F1.2", "", 403),
    ("GET", "/dicom-web/./studies", "", 403),
    ("GET", f"/dicom-web/studies/{S}//series", "", 403),
    ("GET", "/dicom-web/studies\\..\\tools", "", 403),
    ("GET", "/dicom-web/studies", f"StudyInstanceUID={S}&StudyInstanceUID=1.2", 403),
    ("GET", "/dicom-web/studies", "StudyInstanceUID=1.2.*", 403),
    ("GET", "/dicom-web/studies", "x=" + "a" * 5000, 403),
    ("GET", "/wado", "", 403),
    ("GET", "/wado", f"requestType=WADO&studyUID={S}&seriesUID={SE}", 403),
    ("GET", "/wado", f"requestType=OTHER&studyUID={S}&seriesUID={SE}&objectUID={I}", 403),
])
def test_everything_else_is_refused(method: str, path: str, query: str, status: int) -> None:
    decision = classify(method, path.encode(), query)
    assert isinstance(decision, Refusal) and decision.status == status, decision


def test_orthanc_reads_query_values_undecoded() -> None:
    """Orthanc 1.10.1's DICOMweb plugin takes '%2A' literally: the gateway decodes what it must."""
    assert orthanc_query("PatientName=SMITH%2A&includefield=00081030%2C00080060") == (
        "PatientName=SMITH*&includefield=00081030,00080060")
    assert orthanc_query("contentType=application%2Fdicom&PatientName=A%5EB") == (
        "contentType=application/dicom&PatientName=A^B")
    # What would change the query's structure stays encoded.
    assert orthanc_query("PatientName=A%26B%3DC%23D%25") == "PatientName=A%26B%3DC%23D%25"
    assert orthanc_query("") == ""


def test_app_config_points_ohif_at_the_gateway_only() -> None:
    config = app_config_js()
    assert "origin + '/dicom-web'" in config and "origin + '/wado'" in config
    assert "http://" not in config and "https://" not in config  # no other server named
    assert "showStudyList: false" in config and "dangerouslyUseDynamicConfig" not in config
    assert '"supportsStow": false' in config


def test_hashed_files_are_cached_for_good() -> None:
    assert HASHED.search("/app.bundle.0f6159c501addfe9.js")
    assert HASHED.search("/37fa160cc3a47cfd.wasm")
    assert not HASHED.search("/app-config.js") and not HASHED.search("/index.html")


def test_the_stack_runs_the_gateway_on_the_installed_viewer(tmp_path: Path) -> None:
    settings = settings_from_values(make_values(tmp_path, tmp_path / "pg"))
    conf = render_supervisord_conf(settings, tmp_path / ".env", StackLayout(tmp_path / "state"))
    section = conf.split("[program:viewer]")[1].split("\n[")[0]
    assert f"-m viewer --dist {ohif.dist_dir()}" in section
    assert "HUB_ENV_FILE=" in section and "autostart=false" in section


# --- the install ----------------------------------------------------------------------


def _tarball(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info)
    return path


GOOD = {
    "package/package.json": b"{}",
    "package/dist/index.html": b"<html>OHIF</html>",
    "package/dist/app.bundle.0123456789abcdef.js": b"bundle",
    "package/dist/app.bundle.0123456789abcdef.js.map": b"map",
    "package/dist/assets/logo.svg": b"<svg/>",
}


# esbuild's CLI as ohif.minify uses it: flags, then entry points; each entry point's output is written to
# --outdir at its path below --outbase (here both the dist, in place). Anything that could change the
# program or the file names is refused.
FAKE_ESBUILD = f"""#!{sys.executable}
import os, sys
flags = [a for a in sys.argv[1:] if a.startswith("--")]
entries = [a for a in sys.argv[1:] if not a.startswith("--")]
if os.environ.get("FAKE_ESBUILD_FAIL"):
    sys.exit("X [ERROR] Expected ';' but found 'bundle'")
if ("--minify-whitespace" not in flags or "--allow-overwrite" not in flags
        or any(f.split("=")[0] in ("--bundle", "--format", "--minify", "--out-extension") for f in flags)):
    sys.exit("unexpected flags: " + " ".join(flags))
opts = dict(f[2:].split("=", 1) for f in flags if "=" in f)
for entry in entries:
    with open(entry) as handle:
        text = handle.read()
    out = os.path.join(opts["outdir"], os.path.relpath(entry, opts["outbase"]))
    with open(out, "w") as handle:
        handle.write(" ".join(text.split()) + "\\n")
"""
SCRIPTS = {
    "package/dist/app.bundle.0123456789abcdef.js": b"function  main ( )  {\n    return 1;\n}\n",
    "package/dist/ort/esm/ort.min.js": b"export  const  x = 1;\n",
}


def _release(tarball: Path) -> ohif.NpmRelease:
    return ohif.NpmRelease("@ohif/app", "9.9.9", ohif.integrity_of(tarball))


def _esbuild(tmp_path: Path) -> tuple[ohif.NpmRelease, Path]:
    """The fake esbuild's tarball, made once per test (gzip stamps the time: a second one would not match the pin)."""
    tarball = tmp_path / "esbuild.tgz"
    if not tarball.exists():
        _tarball(tarball, {"package/package.json": b"{}", "package/bin/esbuild": FAKE_ESBUILD.encode()})
    return ohif.NpmRelease("@esbuild/linux-x64", "0.0.1", ohif.integrity_of(tarball)), tarball


class CopyFetcher:
    """Each release's tarball by package name; the OHIF one is `tarball`, esbuild's the fake one."""

    def __init__(self, tarball: Path, esbuild: Path | None = None) -> None:
        self.tarballs = {"@ohif/app": tarball, "@esbuild/linux-x64": esbuild or _esbuild(tarball.parent)[1]}
        self.calls: list[str] = []

    def __call__(self, release: ohif.NpmRelease, directory: Path) -> Path:
        self.calls.append(release.package)
        source = self.tarballs[release.package]
        target = directory / source.name
        target.write_bytes(source.read_bytes())
        return target


def _install(root: Path, tarball: Path, fetcher: CopyFetcher | None = None,
             minifier: ohif.NpmRelease | None = None) -> Path:
    return ohif.ensure_ohif(root, _release(tarball), out=lambda _: None, fetcher=fetcher or CopyFetcher(tarball),
                            minifier=minifier or _esbuild(tarball.parent)[0])


def test_install_checks_the_checksum_unpacks_dist_and_is_idempotent(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "app.tgz", GOOD)
    minifier = _esbuild(tmp_path)[0]
    release, fetcher, root = _release(tarball), CopyFetcher(tarball), tmp_path / "ohif"
    dist = _install(root, tarball, fetcher, minifier)
    assert dist == root / "9.9.9" / "dist" and ohif.is_installed(root, release, minifier)
    assert sorted(p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()) == [
        "app.bundle.0123456789abcdef.js", "assets/logo.svg", "index.html"]  # no source map, nothing outside dist
    assert (root / "9.9.9" / ohif.MARKER).read_text() == (
        f"{release.integrity}\nminified by @esbuild/linux-x64@0.0.1 --minify-whitespace\n")
    assert _install(root, tarball, fetcher, minifier) == dist
    assert fetcher.calls == ["@ohif/app", "@esbuild/linux-x64"]
    assert [p.name for p in root.iterdir() if p.name.startswith(".install-")] == []
    assert not (root / "9.9.9" / "esbuild").exists()  # the binary is not kept


def test_every_script_is_minified_in_place_and_nothing_else(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "app.tgz", {**GOOD, **SCRIPTS})
    dist = _install(tmp_path / "ohif", tarball)
    assert (dist / "app.bundle.0123456789abcdef.js").read_text() == "function main ( ) { return 1; }\n"
    assert (dist / "ort" / "esm" / "ort.min.js").read_text() == "export const x = 1;\n"
    assert (dist / "index.html").read_text() == "<html>OHIF</html>"
    assert sorted(p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()) == [
        "app.bundle.0123456789abcdef.js", "assets/logo.svg", "index.html", "ort/esm/ort.min.js"]


def test_an_install_made_before_minifying_is_replaced(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "app.tgz", {**GOOD, **SCRIPTS})
    release, root = _release(tarball), tmp_path / "ohif"
    (root / "9.9.9" / "dist").mkdir(parents=True)
    (root / "9.9.9" / "dist" / "index.html").write_text("<html>OHIF</html>")
    (root / "9.9.9" / "dist" / "app.bundle.0123456789abcdef.js").write_text("function  main ( )  {}\n")
    (root / "9.9.9" / ohif.MARKER).write_text(release.integrity + "\n")  # the marker before minifying
    minifier = _esbuild(tmp_path)[0]
    assert not ohif.is_installed(root, release, minifier)
    fetcher = CopyFetcher(tarball)
    dist = _install(root, tarball, fetcher, minifier)
    assert fetcher.calls == ["@ohif/app", "@esbuild/linux-x64"]
    assert (dist / "app.bundle.0123456789abcdef.js").read_text() == "function main ( ) { return 1; }\n"
    assert ohif.is_installed(root, release, minifier)
    # Another pinned esbuild is another install, too.
    assert not ohif.is_installed(root, release, ohif.NpmRelease("@esbuild/linux-x64", "0.0.2", minifier.integrity))


def test_a_tarball_that_does_not_match_its_pin_installs_nothing(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "app.tgz", GOOD)
    pinned = ohif.NpmRelease("@ohif/app", "9.9.9", "sha512-" + "A" * 86 + "==")
    with pytest.raises(ohif.OhifError, match="checksum"):
        ohif.ensure_ohif(tmp_path / "ohif", pinned, out=lambda _: None, fetcher=CopyFetcher(tarball),
                         minifier=_esbuild(tmp_path)[0])
    assert not (tmp_path / "ohif" / "9.9.9").exists()
    assert not ohif.is_installed(tmp_path / "ohif", pinned)


def test_an_esbuild_that_does_not_match_its_pin_installs_nothing(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "app.tgz", GOOD)
    minifier, fake = _esbuild(tmp_path)
    pinned = ohif.NpmRelease(minifier.package, minifier.version, "sha512-" + "A" * 86 + "==")
    with pytest.raises(ohif.OhifError, match=r"@esbuild/linux-x64@0\.0\.1: the tarball's checksum .* nothing was"):
        _install(tmp_path / "ohif", tarball, CopyFetcher(tarball, fake), pinned)
    assert not (tmp_path / "ohif" / "9.9.9").exists()


def test_a_failing_esbuild_installs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = _tarball(tmp_path / "app.tgz", {**GOOD, **SCRIPTS})
    monkeypatch.setenv("FAKE_ESBUILD_FAIL", "1")
    with pytest.raises(ohif.OhifError, match=r"esbuild could not minify the viewer \(exit 1\): X \[ERROR\] Expected"):
        _install(tmp_path / "ohif", tarball)
    assert not (tmp_path / "ohif" / "9.9.9").exists()
    assert [p.name for p in (tmp_path / "ohif").iterdir() if p.name.startswith(".install-")] == []


@pytest.mark.parametrize(("system", "machine"), [("Linux", "aarch64"), ("Darwin", "x86_64"), ("Linux", "armv7l")])
def test_a_machine_the_pinned_esbuild_cannot_run_on_is_refused_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str, machine: str,
) -> None:
    monkeypatch.setattr(ohif.platform, "system", lambda: system)
    monkeypatch.setattr(ohif.platform, "machine", lambda: machine)
    tarball = _tarball(tmp_path / "app.tgz", GOOD)
    fetcher = CopyFetcher(tarball)
    with pytest.raises(ohif.OhifError, match=f"Linux x86-64 binary, and this machine is {system} {machine}: "
                                             "install on x86-64 Linux"):
        _install(tmp_path / "ohif", tarball, fetcher)
    assert fetcher.calls == [] and not (tmp_path / "ohif" / "9.9.9").exists()


@pytest.mark.parametrize("entry", ["link", "parent", "absolute"])
def test_unsafe_tarball_entries_are_refused(tmp_path: Path, entry: str) -> None:
    info = tarfile.TarInfo({"link": "package/dist/evil", "parent": "package/dist/../../evil",
                            "absolute": "/etc/evil"}[entry])
    if entry == "link":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tarball = _tarball(tmp_path / "app.tgz", GOOD, [info])
    with pytest.raises(ohif.OhifError, match="tarball"):
        _install(tmp_path / "ohif", tarball)
    assert not (tmp_path / "ohif" / "9.9.9").exists() and not (tmp_path / "evil").exists()


def test_an_interrupted_install_is_replaced(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "app.tgz", GOOD)
    root = tmp_path / "ohif"
    (root / "9.9.9" / "dist").mkdir(parents=True)
    (root / "9.9.9" / "dist" / "half-written.js").write_text("")  # no marker: not installed
    (root / ".install-dead").mkdir()  # left by a killed install
    dist = _install(root, tarball)
    assert not (dist / "half-written.js").exists() and (dist / "index.html").is_file()
    assert not (root / ".install-dead").exists()


@pytest.fixture
def tarball_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    (tmp_path / "served").mkdir()
    tarball = _tarball(tmp_path / "served" / "app.tgz", GOOD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tarball.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tarball
    finally:
        server.shutdown()
        server.server_close()


def test_the_direct_download(tarball_server: tuple[str, Path], tmp_path: Path) -> None:
    url, tarball = tarball_server
    release = _release(tarball)
    (tmp_path / "dl").mkdir()
    got = ohif.fetch_direct(release, tmp_path / "dl", url=f"{url}/app.tgz")
    assert ohif.integrity_of(got) == release.integrity
    with pytest.raises(ohif.OhifError, match="HTTP 404"):
        ohif.fetch_direct(release, tmp_path / "dl", url=f"{url}/missing.tgz")


def test_the_pinned_releases() -> None:
    assert ohif.OHIF.spec == "@ohif/app@3.13.2"
    assert ohif.OHIF.tarball_url == "https://registry.npmjs.org/@ohif/app/-/app-3.13.2.tgz"
    assert ohif.OHIF.integrity.startswith("sha512-") and len(ohif.OHIF.integrity) == 95
    assert ohif.ESBUILD.spec == "@esbuild/linux-x64@0.28.2"
    assert ohif.ESBUILD.tarball_url == "https://registry.npmjs.org/@esbuild/linux-x64/-/linux-x64-0.28.2.tgz"
    assert ohif.ESBUILD.integrity.startswith("sha512-") and len(ohif.ESBUILD.integrity) == 95


def test_installing_into_the_default_state_dir_creates_it_as_make_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """var/ is the default STATE_DIR: an install before the first `make run` must not leave it unmarked."""
    from ops import datadirs

    state = tmp_path / "var"
    monkeypatch.setattr(ohif, "DEFAULT_STATE_DIR", state)
    tarball = _tarball(tmp_path / "app.tgz", GOOD)
    _install(state / "ohif", tarball)
    assert datadirs.is_marked(state) and (state.stat().st_mode & 0o777) == 0o700
    # Another root is only created, never marked.
    other = tmp_path / "elsewhere" / "ohif"
    _install(other, tarball)
    assert not datadirs.is_marked(other.parent)


def test_patient_identifiers_are_masked_in_dicom_json_at_any_depth() -> None:
    from viewer.masking import MASK, mask_dicom_json

    document = [{
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]},
        "00100020": {"vr": "LO", "Value": ["MRN-123"]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["F"]},
        "00101030": {"vr": "DS", "Value": [70]},
        "00101002": {"vr": "SQ", "Value": [{"00100020": {"vr": "LO", "Value": ["OTHER-9"]}}]},
        "00081115": {"vr": "SQ", "Value": [{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "NESTED^NAME"}]}}]},
        "00101040": {"vr": "LO", "BulkDataURI": "http://127.0.0.1/bulk/00101040"},
        "00100021": {"vr": "LO"},
        "0020000D": {"vr": "UI", "Value": [S]},
    }]
    [masked] = mask_dicom_json(document)
    assert masked["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": MASK}]}
    assert masked["00100020"] == {"vr": "LO", "Value": [MASK]}
    assert masked["00100030"] == {"vr": "DA"}  # no valid date can stand for a mask: emptied
    assert masked["00101002"] == {"vr": "SQ"}
    assert masked["00081115"]["Value"][0]["00100010"]["Value"] == [{"Alphabetic": MASK}]
    assert masked["00101040"] == {"vr": "LO", "Value": [MASK]}
    # What reading the image needs, and empty attributes, stay as they were.
    assert masked["00100040"]["Value"] == ["F"] and masked["00101030"]["Value"] == [70]
    assert masked["00100021"] == {"vr": "LO"} and masked["0020000D"]["Value"] == [S]
    for secret in ("DOE", "MRN-123", "1970", "OTHER-9", "NESTED"):
        assert secret not in str(masked)


@pytest.mark.parametrize(("path", "query", "refused"), [
    (f"/dicom-web/studies/{S}", "", True),
    (f"/dicom-web/studies/{S}/series/{SE}", "", True),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}", "", True),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/bulk/00100010", "", True),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/bulk/00101002/0/00100020", "", True),
    ("/wado", f"requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={I}&contentType=application%2Fdicom", True),
    ("/wado", f"requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={I}", True),
    ("/wado", f"requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={I}&contentType=image%2Fjpeg"
              "&contentType=application%2Fdicom", True),
    ("/wado", f"requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={I}&contentType=image%2Fjpeg", False),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/bulk/7fe00010", "", False),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/frames/1", "", False),
    (f"/dicom-web/studies/{S}/series/{SE}/instances/{I}/rendered", "", False),
    (f"/dicom-web/studies/{S}/series/{SE}/metadata", "", False),
    ("/dicom-web/studies", f"StudyInstanceUID={S}", False),
])
def test_what_the_viewer_role_may_not_have(path: str, query: str, refused: bool) -> None:
    from viewer.masking import refusal

    read = classify("GET", path.encode(), query)
    assert isinstance(read, Read)
    answer = refusal(read, query)
    assert (answer is not None) == refused
    if answer is not None:
        assert answer.status == 403 and "viewer" in answer.reason


def test_a_viewer_cannot_search_by_patient_identifiers() -> None:
    from viewer.masking import MASK, empty_search

    def decide(query: str) -> bool | Refusal:
        read = classify("GET", b"/dicom-web/studies", query)
        assert isinstance(read, Read)
        return empty_search(read, query)

    assert isinstance(decide("PatientName=SMITH*"), Refusal)
    assert isinstance(decide("00100020=MRN-123&limit=10"), Refusal)
    assert isinstance(decide("patientbirthdate=19700101"), Refusal)
    assert decide(f"PatientID={MASK}") is True  # OHIF's "other studies of this patient": none
    assert decide("PatientName=&includefield=00100010") is False  # asks for the attribute (masked), filters nothing
    assert decide(f"StudyInstanceUID={S}") is False
