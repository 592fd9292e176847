"""Server-default NOT NULL column, USING type change, rename, backfill, constraints.

Adds a NOT NULL column with a server default, changes a column type with a
USING clause, renames a column, backfills with UPDATEs in the same
transaction, and adds a check and a unique constraint.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL column with a server default on a populated table.
    op.add_column(
        "customer",
        sa.Column("tier", sa.String(10), nullable=False, server_default="basic"),
    )
    # Type change that rewrites values: integer cents -> numeric units.
    op.alter_column(
        "orders",
        "amount",
        existing_type=sa.Integer(),
        type_=sa.Numeric(12, 2),
        existing_nullable=False,
        postgresql_using="amount / 100.0",
    )
    op.alter_column("orders", "note", new_column_name="comment")
    # Backfill in the same transaction as the schema changes above.
    op.execute(
        "UPDATE customer SET tier = 'gold' WHERE id IN "
        "(SELECT customer_id FROM orders GROUP BY customer_id HAVING sum(amount) > 10)"
    )
    op.execute("UPDATE orders SET comment = 'n/a' WHERE comment IS NULL")
    op.create_check_constraint("ck_orders_amount_nonneg", "orders", "amount >= 0")
    op.create_unique_constraint("uq_customer_email", "customer", ["email"])


def downgrade() -> None:
    op.drop_constraint("uq_customer_email", "customer", type_="unique")
    op.drop_constraint("ck_orders_amount_nonneg", "orders", type_="check")
    op.alter_column("orders", "comment", new_column_name="note")
    op.alter_column(
        "orders",
        "amount",
        existing_type=sa.Numeric(12, 2),
        type_=sa.Integer(),
        existing_nullable=False,
        postgresql_using="(amount * 100)::integer",
    )
    op.drop_column("customer", "tier")
