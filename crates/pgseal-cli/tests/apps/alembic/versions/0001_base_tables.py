"""Base tables (FK, identity PKs, server_default now()) and seed rows.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    customer = op.create_table(
        "customer",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("email", sa.String(120), nullable=True),
        sa.Column("legacy_code", sa.String(20), nullable=True),  # dropped in 0003
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "customer_id",
            sa.BigInteger(),
            sa.ForeignKey("customer.id", name="fk_orders_customer_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("amount", sa.Integer(), nullable=False),  # cents; numeric in 0002
        sa.Column("note", sa.Text(), nullable=True),  # renamed to comment in 0002
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.bulk_insert(
        customer,
        [
            {"name": "alice", "email": "alice@example.com", "legacy_code": "A1"},
            {"name": "bob", "email": "bob@example.com", "legacy_code": "B2"},
            {"name": "carol", "email": None, "legacy_code": None},
        ],
    )
    op.execute(
        "INSERT INTO orders (customer_id, amount, note) "
        "SELECT c.id, v.amount, v.note FROM customer c "
        "JOIN (VALUES ('alice', 1250, 'first'), ('alice', 300, NULL), "
        "('bob', 9999, 'rush'), ('carol', 50, NULL)) AS v(name, amount, note) "
        "ON v.name = c.name"
    )


def downgrade() -> None:
    op.drop_table("orders")
    op.drop_table("customer")
