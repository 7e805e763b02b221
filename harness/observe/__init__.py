"""Observers of the PC: the tracer, trace formats, the isolation auditor, the kernel view through DWARF, diagnoses.

They import the PC (harness.pc) and never the other way round."""
