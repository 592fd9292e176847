"""PostgreSQL enum type used by a new column, with a backfill.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

order_status = postgresql.ENUM("pending", "paid", "shipped", name="order_status", create_type=False)


def upgrade() -> None:
    order_status.create(op.get_bind(), checkfirst=False)
    op.add_column(
        "orders",
        sa.Column("status", order_status, nullable=False, server_default="pending"),
    )
    op.execute("UPDATE orders SET status = 'paid' WHERE amount >= 10")


def downgrade() -> None:
    op.drop_column("orders", "status")
    order_status.drop(op.get_bind(), checkfirst=False)
