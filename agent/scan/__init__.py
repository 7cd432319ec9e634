"""Commissioning: find what a site has, and write the config block that reads it (``solar-agent scan``).

Read-only by construction: on Modbus only function 3 (read holding registers) is sent, and on MQTT the scan
subscribes and never publishes. Modules, one job each:

    modbus_probe  one link (serial line or TCP): probe a unit, identify a SunSpec unit
    rtu           line-settings detection, then a unit sweep, on an RS-485 port
    tcp           the unit ids behind a Modbus TCP endpoint
    mqtt          listen to a broker; recognise each family by its topics; a sample reading per device
    toml          the [[modbus]] / [[mqtt]] block for site.toml
    results       what was found, as records (``--json``)
    progress      the progress line
"""
