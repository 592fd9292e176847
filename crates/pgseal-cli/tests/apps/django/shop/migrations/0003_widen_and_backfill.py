# Hand-written fixture migration (not generated at test time).
from django.db import migrations, models
from django.db.models import F


def backfill(apps, schema_editor):
    Category = apps.get_model("shop", "Category")
    Product = apps.get_model("shop", "Product")
    # Prices were whole units; after the rename they are cents.
    Product.objects.update(price_cents=F("price_cents") * 100)
    Product.objects.filter(category__name="tools").update(stock=10)
    toys = Category.objects.get(name="toys")
    Product.objects.create(
        name="a remote-controlled model sailing boat with a long name",
        price_cents=4_999_999_999,  # needs bigint
        category=toys,
        stock=1,
    )


def unbackfill(apps, schema_editor):
    Product = apps.get_model("shop", "Product")
    Product.objects.filter(price_cents__gt=2**31 - 1).delete()
    Product.objects.update(price_cents=F("price_cents") / 100, stock=0)


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_stock_index_rename")]

    operations = [
        migrations.AlterField(
            model_name="product",
            name="name",
            field=models.CharField(max_length=120),
        ),
        migrations.AlterField(
            model_name="product",
            name="price_cents",
            field=models.BigIntegerField(),
        ),
        # Data migration last: on PostgreSQL, ALTER TABLE after DML on a table
        # with deferred FK triggers in the same transaction fails.
        migrations.RunPython(backfill, unbackfill),
    ]
