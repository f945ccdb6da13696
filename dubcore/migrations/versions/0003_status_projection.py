"""status_projection: the last status each job workflow published, read without Temporal

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'status_projection',
        sa.Column('workflow_id', sa.String(length=120), primary_key=True),
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('language', sa.String(length=35), nullable=True),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('stage', sa.String(length=20), nullable=True),
        sa.Column('at_ms', sa.BigInteger(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('status', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_status_projection_job_id', 'status_projection', ['job_id'])


def downgrade() -> None:
    op.drop_index('ix_status_projection_job_id', table_name='status_projection')
    op.drop_table('status_projection')
