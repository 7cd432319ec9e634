#!/bin/sh
# /usr/bin/solar-agent: the command, so `sudo solar-agent ...` works (/opt/solar-agent/bin is on no
# PATH). The simulators behind `solar-agent simulate` and `solar-agent demo` replay the device
# corpus (tests/cases of a checkout), which the package keeps in /usr/share/solar-agent/cases.
SOLAR_AGENT_CORPUS=${SOLAR_AGENT_CORPUS:-/usr/share/solar-agent/cases}
export SOLAR_AGENT_CORPUS
exec /opt/solar-agent/bin/solar-agent "$@"
