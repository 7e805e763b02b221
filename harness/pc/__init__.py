"""The PC: CPU glue, RAM, bus, devices, clock, loader, BIOS, native hot paths and snapshots of its own state.

The bottom layer: it imports nothing else of the harness. Observers attach to it through the event stream
(events.py) and the hook points documented in docs/architecture.md."""
