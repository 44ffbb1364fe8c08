"""Test harness: real PostgreSQL, real Orthanc and real DICOM peers on loopback."""
