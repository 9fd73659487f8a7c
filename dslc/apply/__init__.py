"""`dslc apply`: the driver over files, the report and its renderings, file
I/O, and the per-file result cache."""
