// Creates Kafka topics with Kafka's own admin client (run by scripts/kafka/create-topics):
//   java -cp 'LIBS/*' CreateTopics.java BOOTSTRAP PARTITIONS TOPIC...
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;

public class CreateTopics {
  public static void main(String[] args) throws Exception {
    if (args.length < 3) {
      System.err.println("usage: CreateTopics BOOTSTRAP PARTITIONS TOPIC...");
      System.exit(2);
    }
    Properties props = new Properties();
    props.put("bootstrap.servers", args[0]);
    int partitions = Integer.parseInt(args[1]);
    List<NewTopic> topics = new ArrayList<>();
    for (int i = 2; i < args.length; i++) {
      topics.add(new NewTopic(args[i], partitions, (short) 1));
    }
    try (Admin admin = Admin.create(props)) {
      admin.createTopics(topics).all().get();
    }
  }
}
