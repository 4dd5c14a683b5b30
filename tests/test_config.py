import pytest

from ftsip import config


def write(tmp_path, text):
    p = tmp_path / "ftsip.toml"
    p.write_text(text)
    return p


def test_defaults_are_complete_and_valid():
    cfg = config.load()
    assert cfg.server.listen == ["127.0.0.1:5060"]
    assert cfg.domains == ["127.0.0.1"]
    assert cfg.realm == "127.0.0.1"
    assert cfg.transaction.t1 == 0.5


def test_shipped_config_file_is_valid():
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = config.load(os.path.join(root, "configs", "ftsip.toml"))
    assert cfg.server.mode == "threads"


def test_file_overrides_and_cli_overrides(tmp_path):
    p = write(tmp_path, '[server]\nthreads = 3\ndomain = ["Example.COM"]\n[transaction]\nt1 = 1\n')
    cfg = config.load(p, {("server", "threads"): 5})
    assert cfg.server.threads == 5
    assert cfg.domains == ["example.com"]
    assert cfg.transaction.t1 == 1.0 and isinstance(cfg.transaction.t1, float)


@pytest.mark.parametrize("text, must_say", [
    ("[server]\nthreadz = 2\n", ["unknown key 'threadz'", "[server]", "threads"]),
    ("[servr]\n", ["unknown section [servr]", "[server]"]),
    ('[server]\nthreads = "two"\n', ["[server] threads", "an integer >= 0"]),
    ("[server]\nthreads = -1\n", ["[server] threads", "an integer >= 0"]),
    ('[server]\nlisten = ["127.0.0.1:99999"]\n', ["[server] listen", "HOST:PORT"]),
    ("[location]\nhash_width = 1000\n", ["hash_width", "power of two"]),
    ("[registrar]\nmin_expires = 900\nmax_expires = 600\n", ["min_expires", "max_expires"]),
    ("[server\n", ["not valid TOML"]),
    ("[server]\nthreads = true\n", ["[server] threads"]),
])
def test_bad_config_names_file_key_and_fix(tmp_path, text, must_say):
    p = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert str(p) in msg
    for s in must_say:
        assert s in msg


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.toml")


def test_config_is_read_only():
    cfg = config.load()
    with pytest.raises(AttributeError):
        cfg.server.threads = 4


def test_relative_user_files_resolve_against_the_config_dir(tmp_path):
    p = write(tmp_path, '[auth]\nusers = ["u.csv"]\n')
    assert config.load(p).auth.users == [str(tmp_path / "u.csv")]


def test_reloadable_changes():
    a = config.load()
    b = config.load(overrides={("registrar", "max_expires"): 100, ("server", "threads"): 7})
    ok, restart = config.reloadable_changes(a, b)
    assert ok == [("registrar", "max_expires")]
    assert restart == [("server", "threads")]


@pytest.mark.parametrize("v, want", [("1.2.3.4:5", ("1.2.3.4", 5)), ("[::1]:5070", ("::1", 5070)),
                                     ("host", ("host", 5060)), ("::1", ("::1", 5060))])
def test_split_hostport(v, want):
    assert config.split_hostport(v, 5060) == want
