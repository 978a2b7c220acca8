"""calico-plugin's command line."""

import pytest

from calico.plugin.main import parse_args


def test_main_defaults_and_flags():
    args = parse_args(["ep"])
    assert (args.data_dir, args.local_address, args.log_file_path, args.log_level) == (
        "/opt/plugin/data", "*", "/var/log/calico/plugin_ep.log", "INFO")
    assert (args.connection_timeout_millis, args.connection_keepalive_interval_millis,
            args.poll_interval_ms) == (6000, 2000, 100)
    assert args.watch == "auto" and parse_args(["ep", "--watch", "poll"]).watch == "poll"
    args = parse_args(["network", "--log-file", "", "--log-level", "debug", "--keepalive-ms", "250"])
    assert (args.log_file_path, args.log_level, args.connection_keepalive_interval_millis) == ("", "DEBUG", 250)
    assert parse_args(["network"]).log_file_path == "/var/log/calico/plugin_net.log"


def test_main_rejects_bad_flags(capsys):
    for argv in (["nope"], ["ep", "--poll-interval-ms", "0"], ["ep", "--keepalive-ms", "-5"],
                 ["ep", "--watch", "fanotify"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2
