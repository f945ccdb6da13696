"""exports: which script, the file made, its type, size and name, and the error

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('exports') as batch:
        batch.add_column(sa.Column('script', sa.String(length=10), nullable=False,
                                   server_default='target'))
        batch.add_column(sa.Column('object_key', sa.String(length=512), nullable=True))
        batch.add_column(sa.Column('content_type', sa.String(length=100), nullable=True))
        batch.add_column(sa.Column('size_bytes', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('file_name', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('error', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('exports') as batch:
        for name in ('error', 'file_name', 'size_bytes', 'content_type', 'object_key',
                     'script'):
            batch.drop_column(name)
