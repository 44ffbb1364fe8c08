"""DICOM peers, synthetic studies, the demo and the test harness (tests, bench, make demo)."""
