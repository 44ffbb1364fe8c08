"""Series: how many instances a series held when it was routed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

Instances can reach Orthanc after their series was routed: a modality sending again
what a full DICOM_STORAGE refused, or a late instance. The worker compares the
series' instance count with this one and sends the grown series again to the
destinations that already had it (worker/router.py, resend_grown_series).
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE series ADD COLUMN routed_instances integer")
    op.execute("UPDATE series SET routed_instances = instance_count WHERE routed_at IS NOT NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE series DROP COLUMN routed_instances")
