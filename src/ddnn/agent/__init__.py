"""The C device agent: a complete ddnn end device in C99 (the generated device section, an MQTT
client on libmosquitto speaking docs/protocol.md, deadlines and local fallback), generated from a
stored model. It sits above `runtime` because the agent's configuration (topics, wire constants,
deadlines) is generated from the runtime's own vocabulary, never copied; docs/agent.md.
"""
