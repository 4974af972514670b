"""Recordings: the write-ahead log (``wal``), the HDF5 writer (``hdf5``), EDF+/BDF+ (``edf``, ``edf_stream``), the recorder thread and the daemon's record service (``recorder``)."""
