"""Emulated hardware on this host: device profiles as CPU quotas, link profiles as network
namespaces with tbf (rate) and a delaying relay (delay). See docs/emulation.md."""
