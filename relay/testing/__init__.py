"""Public test helpers: real components on loopback for relay's tests and benchmarks.

- `relay.testing.tls`: a trustme CA and server certificates written to files.
- `relay.testing.dns`: `DnsZone`, an in-process DNS server, `open_dns_server`.
- `relay.testing.dnsmasq`: a real dnsmasq serving a `DnsZone` when installed.
- `relay.testing.fakemx`: a recording fake MX (relay's sink) with optional STARTTLS.
- `relay.testing.postfix`: a private Postfix instance on a loopback port.

Nothing under relay/ outside this package imports it.
"""
