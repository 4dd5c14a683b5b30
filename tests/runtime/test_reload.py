"""SIGHUP reloads the user store and the reloadable config; a bad new config is refused and the old one kept."""
import signal

import pytest
from support import ServerProcess, fetch_contacts, register_contact, write_users

CFG = """[server]
listen = ["127.0.0.1:0"]
domain = ["example.com"]
mode = "{mode}"
workers = 2
threads = 2
[auth]
users = ["{users}"]
[registrar]
max_expires = {max_expires}
"""


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_sighup_applies_reloadable_keys_and_refuses_a_bad_file(tmp_path, mode):
    users = write_users(tmp_path / "users.csv", 20)
    cfg = tmp_path / "ftsip.toml"
    cfg.write_text(CFG.format(mode=mode, users=users, max_expires=3600))
    with ServerProcess("--config", str(cfg), timeout=60) as s:
        assert register_contact(s.addr, "user0001", "pw0001", "example.com", "<sip:a@127.0.0.1:40001>", 3000) == 200
        assert fetch_contacts(s.addr, "user0001", "pw0001", "example.com")["sip:a@127.0.0.1:40001"] > 2990

        # a reloadable key and one that needs a restart
        cfg.write_text(CFG.format(mode=mode, users=users, max_expires=600).replace("workers = 2", "workers = 3"))
        s.signal(signal.SIGHUP)
        assert s.wait_for(r"reload: applied \[registrar\] max_expires", 10), s.log()
        assert s.wait_for(r"\[server\] workers changed but need a restart", 10), s.log()
        # every worker has the new value (each REGISTER may land on another one)
        for port in range(40002, 40008):
            register_contact(s.addr, "user0001", "pw0001", "example.com", f"<sip:a@127.0.0.1:{port}>", 3000)
        got = fetch_contacts(s.addr, "user0001", "pw0001", "example.com")
        assert all(v <= 600 for k, v in got.items() if k != "sip:a@127.0.0.1:40001"), got

        cfg.write_text("[registrar]\nmax_expires = -5\n")
        s.signal(signal.SIGHUP)
        assert s.wait_for(r"reload refused, still running the previous config: .*max_expires", 10), s.log()
        assert register_contact(s.addr, "user0002", "pw0002", "example.com", "<sip:b@127.0.0.1:40010>", 3000) == 200
        assert fetch_contacts(s.addr, "user0002", "pw0002", "example.com")["sip:b@127.0.0.1:40010"] <= 600
        assert s.alive()


def test_a_revoked_user_stops_working_without_a_restart(tmp_path):
    users = write_users(tmp_path / "users.csv", 5)
    with ServerProcess("--domain", "example.com", "--users", str(users)) as s:
        assert register_contact(s.addr, "user0003", "pw0003", "example.com", "<sip:c@127.0.0.1:40020>") == 200
        users.write_text("username,password\nuser0001,pw0001\n")          # user0003 revoked
        s.signal(signal.SIGHUP)
        assert s.wait_for(r"user store: reloaded, 1 users", 10), s.log()
        assert register_contact(s.addr, "user0003", "pw0003", "example.com", "<sip:c@127.0.0.1:40021>") == 401
        assert register_contact(s.addr, "user0001", "pw0001", "example.com", "<sip:d@127.0.0.1:40022>") == 200


def test_sqlite_query_store_serves_and_survives_the_user_file_poll(tmp_path):
    """The paper's baseline store (a SQLite query per authentication) has nothing to reload: the periodic
    user-file check and SIGHUP must leave it alone."""
    from ftsip.auth import add_user
    db = tmp_path / "users.db"
    add_user(str(db), "user0001", "pw0001")
    cfg = tmp_path / "q.toml"
    cfg.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\ndomain = ["example.com"]\n'
                   f'[auth]\nusers = ["{db}"]\nstore = "sqlite-query"\n')
    with ServerProcess("--config", str(cfg)) as s:
        assert register_contact(s.addr, "user0001", "pw0001", "example.com", "<sip:q@127.0.0.1:40030>") == 200
        s.signal(signal.SIGHUP)
        __import__("time").sleep(2.5)          # past one periodic user-file check
        assert s.alive(), s.log()
        add_user(str(db), "user0002", "pw0002")  # queried live: no reload needed
        assert register_contact(s.addr, "user0002", "pw0002", "example.com", "<sip:q@127.0.0.1:40031>") == 200
