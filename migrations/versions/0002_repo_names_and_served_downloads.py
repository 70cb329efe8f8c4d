"""repo names (former / legacy ids) and served download counts

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 19:00:00
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('repo_names',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('repo_id', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['repo_id'], ['repos.id'], name=op.f('fk_repo_names_repo_id_repos'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_repo_names')),
    sa.UniqueConstraint('type', 'name', name='uq_repo_names_type_name')
    )
    with op.batch_alter_table('repo_names', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_repo_names_repo_id'), ['repo_id'], unique=False)
    with op.batch_alter_table('repos', schema=None) as batch_op:
        batch_op.add_column(sa.Column('served_downloads', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('repos', schema=None) as batch_op:
        batch_op.drop_column('served_downloads')
    with op.batch_alter_table('repo_names', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_repo_names_repo_id'))
    op.drop_table('repo_names')
