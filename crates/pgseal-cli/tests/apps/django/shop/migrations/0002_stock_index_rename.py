# Hand-written fixture migration (not generated at test time).
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]

    operations = [
        # NOT NULL column with a default on a populated table.
        migrations.AddField(
            model_name="product",
            name="stock",
            field=models.IntegerField(default=0),
        ),
        migrations.AddIndex(
            model_name="product",
            index=models.Index(fields=["name"], name="shop_product_name_idx"),
        ),
        migrations.RenameField(model_name="product", old_name="price", new_name="price_cents"),
    ]
