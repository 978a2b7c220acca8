"""calico.attach: everything is checked before anything changes, one clear line per fault."""

import pytest

from calico.attach import AttachError, build_request, check_conflicts, generated_mac, netns_path_for, read_endpoints
from calico.common.datafiles import Endpoint, parse_data_text

POOLS = ("192.168.0.0/16", "fd80:24e2:f998:72d6::/64")


def request(**overrides):
    args = dict(netns_path="/var/run/netns/c1", endpoint_id="0123456789abcdef", ips=["192.168.1.1"],
                host="host-1.example.com", groups=["web"], data_dir="/d", pools=POOLS, mac=None)
    args.update(overrides)
    return build_request(**args)


def test_good_request_is_canonicalised():
    req = request(ips=["192.168.1.1", "FD80:24E2:F998:72D6::0001"], groups=["web", "ops"], mac="AA-BB-CC-DD-EE-FF")
    assert req.addrs == ("192.168.1.1", "fd80:24e2:f998:72d6::1")
    assert req.host == "host-1"
    assert req.mac == "aa:bb:cc:dd:ee:ff"
    assert req.interface == "tap0123456789a"
    assert req.file_path == "/d/192_168_1_1.txt"
    text_endpoint = parse_data_text(
        "[endpoint 192_168_1_1]\nid=0123456789abcdef\nip=192.168.1.1,fd80:24e2:f998:72d6::1\n"
        "mac=aa:bb:cc:dd:ee:ff\nhost=host-1\ngroup=web,ops\n", "x.txt").endpoints[0]
    assert req.endpoint().same_dataplane(text_endpoint)


def test_generated_mac_is_stable_local_unicast():
    mac = generated_mac("abc")
    assert mac == generated_mac("abc") != generated_mac("abd")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01


@pytest.mark.parametrize("overrides, reason", [
    (dict(endpoint_id="-rf"), "bad endpoint id"),
    (dict(endpoint_id="a b"), "bad endpoint id"),
    (dict(groups=["we b"]), "bad group name"),
    (dict(groups=[]), "at least one --group"),
    (dict(ips=[]), "at least one --ip"),
    (dict(ips=["10.0.0.1"]), "outside the pool"),
    (dict(ips=["fd00::1"]), "outside the pool"),
    (dict(ips=["192.168.1.1", "192.168.1.1"]), "given twice"),
    (dict(ips=["192.168.1.1/32"]), "bad IP address"),
    (dict(ips=["127.0.0.1"], pools=["127.0.0.0/8"]), "not a unicast host address"),
    (dict(host="bad/host"), "bad host name"),
    (dict(mac="01:00:00:00:00:01"), "multicast"),
    (dict(mac="zz"), "bad MAC"),
])
def test_bad_values_are_refused_with_one_line(overrides, reason):
    with pytest.raises(AttachError, match=reason) as info:
        request(**overrides)
    assert "\n" not in str(info.value)


def existing(ep_id, ip, source="other.txt"):
    return Endpoint(ep_id, (ip,), "aa:bb:cc:dd:ee:01", "host-1", ("web",), source=source)


def test_conflicts_with_files_and_links_are_refused():
    req = request()
    check_conflicts(req, [existing("other", "192.168.1.2")], ["lo", "tapother"])
    with pytest.raises(AttachError, match="192.168.1.1 is already used by endpoint other in other.txt"):
        check_conflicts(req, [existing("other", "192.168.1.1")], [])
    with pytest.raises(AttachError, match="interface tap0123456789a already exists"):
        check_conflicts(req, [], ["tap0123456789a"])
    with pytest.raises(AttachError, match="first 11 characters"):
        check_conflicts(req, [existing("0123456789aZZZ", "192.168.1.9")], [])


def test_read_endpoints_skips_broken_files(tmp_path):
    (tmp_path / "a.txt").write_text("[endpoint a]\nid=a\nip=192.168.1.1\nmac=aa:bb:cc:dd:ee:ff\nhost=h\ngroup=g\n")
    (tmp_path / "b.txt").write_text("not ini at all")
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe")
    (tmp_path / ".a.txt.1.tmp").write_text("[endpoint x]\n")
    assert [ep.endpoint_id for ep in read_endpoints(str(tmp_path))] == ["a"]
    assert read_endpoints(str(tmp_path / "missing")) == []


def test_netns_path_from_name_path_or_pid():
    assert netns_path_for("c1", None) == "/var/run/netns/c1"
    assert netns_path_for("/proc/1/ns/net", None) == "/proc/1/ns/net"
    assert netns_path_for(None, 42) == "/proc/42/ns/net"
    with pytest.raises(AttachError, match="exactly one"):
        netns_path_for("c1", 42)
    with pytest.raises(AttachError, match="exactly one"):
        netns_path_for(None, None)
