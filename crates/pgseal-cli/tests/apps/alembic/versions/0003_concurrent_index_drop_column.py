"""CREATE INDEX CONCURRENTLY (outside the transaction) and a column drop.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CONCURRENTLY cannot run inside a transaction block: Alembic commits the
    # revision's transaction, runs this in autocommit, then begins a new one.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_orders_customer_created",
            "orders",
            ["customer_id", "created_at"],
            postgresql_concurrently=True,
        )
    op.drop_column("customer", "legacy_code")


def downgrade() -> None:
    op.add_column("customer", sa.Column("legacy_code", sa.String(20), nullable=True))
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_orders_customer_created",
            table_name="orders",
            postgresql_concurrently=True,
        )
