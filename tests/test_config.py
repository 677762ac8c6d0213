"""fsqr.yaml → Config: defaults, refusals naming file and key, overrides, the shipped example."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from fsqr.config import (
    Access,
    AETable,
    Config,
    ConfigError,
    Peer,
    Storage,
    Timeouts,
    Tls,
    config_from_mapping,
    load_config,
    with_overrides,
)

REPO = Path(__file__).resolve().parent.parent
PEER = "ae_table: {STORESCP: {host: 127.0.0.1, port: 11113}}\n"


def write(tmp_path: Path, text: str, name: str = "fsqr.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- refusals ---------------------------------------------------------------------------------

BAD = [
    # (YAML text, what the message must contain after "<file>: ")
    ("port: abc", "port: must be an integer from 0 to 65535, got 'abc'"),
    ("port: true", "port: must be an integer from 0 to 65535, got True"),  # bool is no int
    ("port: 65536", "port: must be an integer from 0 to 65535, got 65536"),
    ("port: '11112'", "port: must be an integer"),
    ("prot: 11112", "prot: unknown key (did you mean 'port'?)"),
    ("Port: 11112", "Port: unknown key (did you mean 'port'?)"),
    ("colour: red", "colour: unknown key"),
    ("prot: 1\nfoo: 2", "prot: unknown key (did you mean 'port'?); foo is unknown too"),
    ("ae_title: ''", "ae_title: must be 1 to 16 characters"),
    ("ae_title: '    '", "ae_title: must be 1 to 16 characters"),
    ("ae_title: ABCDEFGHIJKLMNOPQ", "ae_title: must be at most 16 characters"),
    ("ae_title: 'A\\B'", "ae_title: must hold only printable ASCII characters"),
    ('ae_title: "A\\tB"', "ae_title: must hold only printable ASCII characters"),
    ("ae_title: MÜNCHEN", "ae_title: must hold only printable ASCII characters"),
    ("ae_title: 104", "ae_title: must be an AE title (text), got 104"),
    ("host: ''", "host: must be a host name or IP address"),
    ("host: 10", "host: must be a host name or IP address, got 10"),
    ("root: ''", "root: must be the path of a folder"),
    ("root: [a, b]", "root: must be the path of a folder"),
    ("ae_table: [STORESCP]", "ae_table: must map AE titles to {host: ..., port: ...}"),
    (
        "ae_table: {STORESCP: {host: 127.0.0.1, port: abc}}",
        "ae_table.STORESCP.port: must be an integer from 1 to 65535, got 'abc'",
    ),
    ("ae_table: {STORESCP: {host: h, port: 0}}", "ae_table.STORESCP.port: must be an integer"),
    ("ae_table: {STORESCP: {host: h, port: true}}", "ae_table.STORESCP.port: must be an integer"),
    ("ae_table: {STORESCP: {host: h}}", "ae_table.STORESCP.port: is missing"),
    ("ae_table: {STORESCP: {port: 104}}", "ae_table.STORESCP.host: is missing"),
    ("ae_table: {STORESCP: {host: h, port: 1, hots: x}}", "ae_table.STORESCP.hots: unknown key"),
    ("ae_table: {STORESCP: }", "ae_table.STORESCP: must be a mapping with the keys host, port"),
    ("ae_table: {104: {host: h, port: 1}}", "ae_table.104: an AE title must be text"),
    ("ae_table: {ABCDEFGHIJKLMNOPQ: {host: h, port: 1}}", "ae_table.ABCDEFGHIJKLMNOPQ: must be"),
    (
        "ae_table: {A: {host: h, port: 1}, ' A ': {host: h, port: 2}}",
        "ae_table. A : 'A' is given twice",
    ),
    ("log_level: verbose", "log_level: must be one of debug, info, warning, error; got 'verbose'"),
    ("scan_workers: -1", "scan_workers: must be an integer of 0 or more, got -1"),
    ("scan_workers: 1.5", "scan_workers: must be an integer of 0 or more, got 1.5"),
    ("relational_queries: yes", "relational_queries: must be true or false, got 'yes'"),
    ("read_only: 1", "read_only: must be true or false, got 1"),
    ("allow_get_without_role_selection: on", "allow_get_without_role_selection: must be true"),
    (
        "timeouts: 30",
        "timeouts: must be a mapping with the keys acse, dimse, store_response, network, connect",
    ),
    ("timeouts: {dimes: 5}", "timeouts.dimes: unknown key (did you mean 'dimse'?)"),
    ("timeouts: {acse: 0}", "timeouts.acse: must be a positive number of seconds, got 0"),
    ("timeouts: {network: -1}", "timeouts.network: must be a positive number of seconds"),
    ("timeouts: {dimse: .inf}", "timeouts.dimse: must be a positive number of seconds, got inf"),
    ("timeouts: {connect: soon}", "timeouts.connect: must be a number of seconds, got 'soon'"),
    ("max_associations: 0", "max_associations: must be an integer of 1 or more, got 0"),
    ("max_pdu: 100", "max_pdu: must be 0 (no limit) or an integer from 4096 to 4294967295"),
    ("max_pdu: 4294967296", "max_pdu: must be 0 (no limit) or an integer from 4096"),
    ("watch: sometimes", "watch: must be one of native, polling, off; got 'sometimes'"),
    ("poll_interval: 0", "poll_interval: must be a positive number of seconds, got 0"),
    ("storage: {on_duplicate: overwrite}", "storage.on_duplicate: must be one of replace, keep"),
    ("storage: {layot: x}", "storage.layot: unknown key (did you mean 'layout'?)"),
    ("storage: {layout: '{PatientID}.dcm'}", "storage.layout: must contain {SOPInstanceUID}"),
    ("storage: {layout: '/srv/{SOPInstanceUID}'}", "storage.layout: must be a relative path"),
    ("storage: {layout: '../{SOPInstanceUID}'}", "storage.layout: must be a relative path"),
    ("storage: {layout: '{SOPInstanceUID'}", "storage.layout: is not a valid template"),
    ("storage: {layout: '{SOPInstanceUID.x}'}", "storage.layout: fields must be plain DICOM"),
    ("storage: {layout: '{SOPInstanceUID!r}'}", "storage.layout: fields must be plain DICOM"),
    (
        "storage: {layout: '{PatientId}/{SOPInstanceUID}'}",
        "storage.layout: {PatientId} is not a DICOM keyword (did you mean {PatientID}?)",
    ),
    ("access: {callers: some}", "access.callers: must be one of any, known; got 'some'"),
    ("access: {allow: find}", "access.allow: must be a list of echo, find, move, get, store"),
    ("access: {allow: [fnd]}", "access.allow: must be one of echo, find, move, get, store"),
    ("access: {check_address: yes}", "access.check_address: must be true or false"),
    ("ae_table: {A: {host: h, port: 1, allow: [copy]}}", "ae_table.A.allow: must be one of"),
    ("ae_table: {A: {host: h, port: 1, tls: 1}}", "ae_table.A.tls: must be true or false"),
    ("tls: {certificate: server.pem}", "tls: certificate and key must be given together"),
    ("tls: {key: server.key}", "tls: certificate and key must be given together"),
    ("tls: {ca: ''}", "tls.ca: must be the path of a file"),
    ("max_find_responses: -1", "max_find_responses: must be an integer of 0 or more, got -1"),
    ("- port\n- 11112", "must be a mapping of keys to values"),
    ("just words", "must be a mapping of keys to values"),
    ("port: [1", ":1:9: invalid YAML"),  # file, line and column of the syntax error
    ("port: 1\nhost: a\nport: 2", ":3:1: invalid YAML: key 'port' is given twice"),
    ("timeouts:\n  acse: 1\n  acse: 2", ":3:3: invalid YAML: key 'acse' is given twice"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    BAD,
    ids=[f"{i:02}-{text.splitlines()[0][:40]}" for i, (text, _) in enumerate(BAD)],
)
def test_bad_config_is_refused_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:")
    assert expected in message


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "absent.yaml", "absent.yaml: no such file"),
        (lambda tmp: tmp, ": cannot read:"),  # a folder is not a config file
        (lambda tmp: write_bytes(tmp / "latin1.yaml", b"ae_title: M\xfcnchen"), "not UTF-8"),
    ],
    ids=["missing", "folder", "not-utf8"],
)
def test_unreadable_file_is_refused(tmp_path: Path, make: Any, expected: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:")


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- accepted values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "attribute", "expected"),
    [
        ("port: 0", "port", 0),  # any free port
        ("port: 65535", "port", 65535),
        ("ae_title: '  FSQR_2  '", "ae_title", "FSQR_2"),  # spaces around are not significant
        ("ae_title: 'MY AE'", "ae_title", "MY AE"),  # inside, a space is part of the title
        ("ae_title: abcdefghijklmnop", "ae_title", "abcdefghijklmnop"),  # 16 is the most
        ("host: '::'", "host", "::"),
        ("log_level: DEBUG", "log_level", "debug"),
        ("watch: off", "watch", "off"),  # a word in YAML 1.2, not False
        ("watch: Polling", "watch", "polling"),
        ("poll_interval: 1", "poll_interval", 1.0),
        ("max_pdu: 0", "max_pdu", 0),  # no limit, PS3.8 D.1
        ("max_pdu: 4096", "max_pdu", 4096),
        ("scan_workers: 4", "scan_workers", 4),
        ("relational_queries: false", "relational_queries", False),
        ("read_only: true", "read_only", True),
        ("timeouts: {dimse: 5}", "timeouts", Timeouts(dimse=5.0)),  # others keep defaults
        ("timeouts: {acse: 0.5}", "timeouts", Timeouts(acse=0.5)),
        ("storage: {on_duplicate: reject}", "storage", Storage(on_duplicate="reject")),
        ("storage: {layout: '{SOPInstanceUID}'}", "storage", Storage(layout="{SOPInstanceUID}")),
        ("ae_table: {}", "ae_table", AETable()),
        ("ae_table:", "ae_table", AETable()),  # every peer commented out
        ("port:", "port", 11112),  # a key left empty takes its default
    ],
    ids=[
        "port-0",
        "port-max",
        "ae-title-stripped",
        "ae-title-inner-space",
        "ae-title-16",
        "host-ipv6",
        "log-level-any-case",
        "watch-off-is-a-word",
        "watch-any-case",
        "int-seconds",
        "max-pdu-unlimited",
        "max-pdu-min",
        "scan-workers",
        "relational-off",
        "read-only",
        "timeouts-partial",
        "timeouts-fraction",
        "storage-partial",
        "storage-minimal-layout",
        "ae-table-empty",
        "ae-table-null",
        "null-is-default",
    ],
)
def test_valid_value_is_read(tmp_path: Path, text: str, attribute: str, expected: object) -> None:
    config = load_config(write(tmp_path, text))
    assert getattr(config, attribute) == expected
    assert type(getattr(config, attribute)) is type(expected)


@pytest.mark.parametrize(
    "text",
    ["", "# only comments\n", "---\n"],
    ids=["empty", "comments", "empty-document"],
)
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == Config()


def test_defaults_are_the_documented_ones() -> None:
    config = load_config(None)
    assert config == Config()
    assert (config.ae_title, config.host, config.port, config.root) == (
        "FSQR",
        "0.0.0.0",
        11112,
        Path("."),
    )
    assert dict(config.ae_table) == {}
    assert (config.log_level, config.scan_workers, config.relational_queries) == ("info", 0, True)
    assert config.timeouts == Timeouts(acse=30.0, dimse=30.0, network=60.0, connect=10.0)
    assert (config.max_associations, config.max_pdu) == (32, 16382)
    assert (config.watch, config.poll_interval) == ("native", 2.0)
    assert config.storage == Storage(
        layout="incoming/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
        on_duplicate="replace",
    )
    assert (config.read_only, config.allow_get_without_role_selection) == (False, False)


def test_config_is_frozen_hashable_and_picklable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PEER))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    assert hash(config) == hash(pickle.loads(pickle.dumps(config)))
    assert pickle.loads(pickle.dumps(config)) == config


# --- AE titles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "found"),
    [
        ("STORESCP", True),
        ("  STORESCP  ", True),  # PS3.5 6.2: leading and trailing spaces are not significant
        ("STORESCP        ", True),  # as padded to 16 on the wire
        ("storescp", False),  # AE titles are case sensitive
        ("OTHER", False),
    ],
    ids=["exact", "spaces", "wire-padded", "case-sensitive", "unknown"],
)
def test_peer_lookup_ignores_surrounding_spaces(tmp_path: Path, asked: str, found: bool) -> None:
    config = load_config(write(tmp_path, PEER))
    expected = Peer("STORESCP", "127.0.0.1", 11113) if found else None
    assert config.peer(asked) == expected


def test_ae_table_keys_are_stripped(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "ae_table: {'  PACS ': {host: pacs, port: 104}}"))
    assert list(config.ae_table) == ["PACS"]
    assert config.ae_table["PACS"] == Peer("PACS", "pacs", 104)
    assert config.ae_table == {"PACS": Peer("PACS", "pacs", 104)}  # a Mapping, equal as one


def test_ae_table_keeps_file_order(tmp_path: Path) -> None:
    text = "ae_table:\n  B: {host: b, port: 2}\n  A: {host: a, port: 1}\n  C: {host: c, port: 3}\n"
    assert list(load_config(write(tmp_path, text)).ae_table) == ["B", "A", "C"]


def test_ae_table_rejects_duplicate_peers() -> None:
    with pytest.raises(ValueError, match="unique"):
        AETable((Peer("A", "h", 1), Peer("A", "h", 2)))


# --- root ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root_line", "expected"),
    [
        ("root: data", "conf/data"),  # relative to the config file's folder, not the cwd
        ("root: ./data", "conf/data"),
        ("root: ../data", "conf/../data"),
        ("", None),  # not given: the default, the working directory
    ],
    ids=["relative", "dot-relative", "parent", "absent"],
)
def test_relative_root_is_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_line: str, expected: str | None
) -> None:
    path = write(tmp_path, root_line, name="conf/fsqr.yaml")
    monkeypatch.chdir(tmp_path / "conf")
    config = load_config(Path("fsqr.yaml"))  # a relative config path, too
    assert config.root == (tmp_path / expected if expected else Path("."))
    assert load_config(path) == config


def test_tls_files_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    text = "tls: {certificate: pki/server.pem, key: /etc/fsqr/server.key}\n"
    config = load_config(write(tmp_path, text, "conf/fsqr.yaml"))
    assert config.tls.certificate == tmp_path / "conf" / "pki" / "server.pem"
    assert config.tls.key == Path("/etc/fsqr/server.key")
    assert config.tls.ca is None


def test_absolute_root_is_kept(tmp_path: Path) -> None:
    served = tmp_path / "served"
    assert load_config(write(tmp_path, f"root: {served}")).root == served


def test_home_in_root_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(write(tmp_path, "root: ~/dicom")).root == tmp_path / "home" / "dicom"


@pytest.mark.parametrize(
    "snapshot",
    ["served/.fsqr/index.snapshot", "served", "served/../served/x"],
    ids=["below", "the-root-itself", "dotted"],
)
def test_an_index_snapshot_inside_the_root_is_refused(tmp_path: Path, snapshot: str) -> None:
    text = f"root: served\nindex_snapshot: {snapshot}\n"
    with pytest.raises(ConfigError, match=r"fsqr.yaml: index_snapshot: must be outside"):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"<arguments>: index_snapshot: must be outside"):
        config_from_mapping({"root": tmp_path / "served", "index_snapshot": tmp_path / snapshot})


def test_an_index_snapshot_beside_the_root_is_relative_to_the_config_folder(
    tmp_path: Path,
) -> None:
    text = "root: served\nindex_snapshot: state/index.snapshot\n"
    config = load_config(write(tmp_path, text, "conf/fsqr.yaml"))
    assert config.index_snapshot == tmp_path / "conf" / "state" / "index.snapshot"


def test_the_root_given_on_the_command_line_is_the_one_checked(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "index_snapshot: cache/index.snapshot\n"))
    with pytest.raises(ConfigError, match="index_snapshot: must be outside"):
        with_overrides(config, root=tmp_path / "cache")
    assert with_overrides(config, root=tmp_path / "served").root == tmp_path / "served"


def test_root_from_arguments_stays_relative_to_the_working_directory() -> None:
    assert config_from_mapping({"root": "data"}).root == Path("data")
    assert config_from_mapping({"root": Path("data")}).root == Path("data")


# --- overrides and mappings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"port": 2000, "host": "10.0.0.1", "ae_title": "FILE"}),
        ({"port": 3000}, {"port": 3000, "host": "10.0.0.1"}),  # flag beats file
        ({"port": None, "host": None}, {"port": 2000, "host": "10.0.0.1"}),  # None: not given
        ({"ae_title": " CLI "}, {"ae_title": "CLI"}),
        ({"root": "elsewhere"}, {"root": Path("elsewhere")}),  # DIR: relative to the cwd
        ({"timeouts": {"acse": 1}}, {"timeouts": Timeouts(acse=1.0, dimse=5.0)}),  # merged
        ({"timeouts": {"dimse": None}}, {"timeouts": Timeouts(dimse=5.0)}),
        ({"timeouts": Timeouts(acse=2.0)}, {"timeouts": Timeouts(acse=2.0)}),  # replaced
        (
            {"ae_table": {"NEW": {"host": "n", "port": 1}}},
            {"ae_table": {"NEW": Peer("NEW", "n", 1)}},
        ),
        ({"ae_table": {"NEW": Peer("NEW", "n", 1)}}, {"ae_table": {"NEW": Peer("NEW", "n", 1)}}),
    ],
    ids=[
        "nothing",
        "port",
        "none-keeps-file",
        "ae-title-stripped",
        "root",
        "timeouts-merge",
        "timeouts-none-keeps",
        "timeouts-instance",
        "ae-table-replaced",
        "ae-table-peers",
    ],
)
def test_overrides_beat_the_file(
    tmp_path: Path, overrides: dict[str, Any], expected: dict[str, Any]
) -> None:
    text = "port: 2000\nhost: 10.0.0.1\nae_title: FILE\ntimeouts: {dimse: 5}\n" + PEER
    config = with_overrides(load_config(write(tmp_path, text)), **overrides)
    for attribute, value in expected.items():
        assert getattr(config, attribute) == value


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"port": True}, "<arguments>: port: must be an integer from 0 to 65535, got True"),
        ({"port": "11112"}, "<arguments>: port: must be an integer"),
        ({"prot": 1}, "<arguments>: prot: unknown key (did you mean 'port'?)"),
        ({"ae_title": "X" * 17}, "<arguments>: ae_title: must be at most 16 characters"),
        ({"timeouts": {"dimes": 1}}, "<arguments>: timeouts.dimes: unknown key"),
        ({"ae_table": {"A": Peer("B", "h", 1)}}, "<arguments>: ae_table.A: holds a Peer named 'B'"),
    ],
    ids=["bool-port", "text-port", "unknown", "long-ae-title", "nested-unknown", "peer-mismatch"],
)
def test_overrides_are_validated(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(Config(), **overrides)
    assert str(caught.value).startswith(expected)


def test_config_from_mapping_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^Server\(\): port: must be an integer"):
        config_from_mapping({"port": -1}, source="Server()")


def test_config_from_mapping_accepts_the_dataclasses() -> None:
    table = AETable((Peer("STORESCP", "127.0.0.1", 11113),))
    config = config_from_mapping(
        {"ae_table": table, "timeouts": Timeouts(dimse=1.0), "storage": Storage()}
    )
    assert (config.ae_table, config.timeouts.dimse) == (table, 1.0)


# --- the shipped example ---------------------------------------------------------------------


def test_shipped_example_loads() -> None:
    config = load_config(REPO / "fsqr.yaml")
    assert config.root == REPO / "sample_data"
    assert config.worklist == REPO / "sample_data" / "worklist"
    assert (config.ae_title, config.port) == ("FSQR", 11112)
    assert config.peer("STORESCP") == Peer("STORESCP", "127.0.0.1", 11113)
    # examples/move_to_myself.py, as docs/how-a-c-move-works.md runs it against this file
    assert config.peer("EXAMPLE") == Peer("EXAMPLE", "127.0.0.1", 11113)
    assert len(config.ae_table) == 3


def test_shipped_example_shows_the_defaults() -> None:
    config = load_config(REPO / "fsqr.yaml")
    examples = {"root": Path("."), "ae_table": AETable(), "worklist": None}
    assert dataclasses.replace(config, **examples) == Config()


def test_shipped_example_names_every_key() -> None:
    data = yaml.safe_load((REPO / "fsqr.yaml").read_text(encoding="utf-8"))
    assert set(data) == {f.name for f in dataclasses.fields(Config)}
    assert set(data["timeouts"]) == {f.name for f in dataclasses.fields(Timeouts)}
    assert set(data["storage"]) == {f.name for f in dataclasses.fields(Storage)}
    assert set(data["access"]) == {f.name for f in dataclasses.fields(Access)}
    assert set(data["tls"]) == {f.name for f in dataclasses.fields(Tls)}
