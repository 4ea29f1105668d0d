// Smoke check with KafkaJS: admin, gzip produce with headers, offsets, configs.
// Usage: npm install kafkajs && node tests/compat/kafkajs.js 127.0.0.1:9092
const assert = require('assert')
const { Kafka, CompressionTypes, logLevel } = require('kafkajs')

const kafka = new Kafka({ clientId: 'compat', brokers: [process.argv[2] || '127.0.0.1:9092'], logLevel: logLevel.ERROR })
const topic = 'compat-js-' + Date.now()

;(async () => {
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] })
  // Shoal has no producer ids yet: idempotence off.
  const producer = kafka.producer({ idempotent: false })
  await producer.connect()
  const messages = Array.from({ length: 50 }, (_, i) => ({ key: 'k' + i, value: 'v' + i, partition: i % 2, headers: { h: 'x' } }))
  const sent = await producer.send({ topic, compression: CompressionTypes.GZIP, messages })
  assert.deepStrictEqual(sent.map(r => r.errorCode), [0, 0])
  const offsets = await admin.fetchTopicOffsets(topic)
  assert.deepStrictEqual(offsets.map(o => [o.low, o.high]), [['0', '25'], ['0', '25']])
  const configs = await admin.describeConfigs({ resources: [{ type: 2, name: topic, configNames: ['cleanup.policy'] }] })
  assert.strictEqual(configs.resources[0].configEntries[0].configValue, 'delete')
  await producer.disconnect()
  await admin.disconnect()
  console.log('kafkajs: ok')
})().catch(e => { console.error(e); process.exit(1) })
